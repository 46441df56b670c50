"""Model-config registry (JSON files whose stem is the model name) and model-family factories.

Every config added here belongs to a *family* whose factory builds the model. Configs in the
original DA-CLIP format carry no family and are DA-CLIP models (family ``"daclip"``); a config may
name another registered family with ``"family": "<name>"`` (e.g. ``"clip"`` for a plain CLIP).
Model names that are not registered here are not ours: the factories pass them to open_clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from open_clip import CLIPTextCfg, CLIPVisionCfg

from .._utils.registry import Registry
from .._utils.suggest import suggest

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "add_model_config",
    "get_model_config",
    "get_model_family",
    "list_models",
    "register_family",
    "get_family_factory",
    "list_families",
    "validate_model_config",
]

DEFAULT_FAMILY = "daclip"
# Keys of a model config that describe it but are not constructor arguments.
#: config keys that describe a model rather than build it
META_KEYS = {"family", "custom_text", "description", "base_model", "preprocess_cfg"}
# Keyword arguments of open_clip.CLIP besides embed_dim / vision_cfg / text_cfg.
_CLIP_KEYS = {"quick_gelu", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale", "output_dict"}
_REQUIRED = {
    None: ("embed_dim", "vision_cfg", "text_cfg"),
    "vision_cfg": ("image_size", "layers", "width", "patch_size"),
    "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers"),
}
_FIELDS = {
    "vision_cfg": {f.name for f in dataclasses.fields(CLIPVisionCfg)},
    "text_cfg": {f.name for f in dataclasses.fields(CLIPTextCfg)},
}

_MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {}
_CONFIG_SOURCES: Dict[str, Path] = {}
#: family name -> ``factory(model_cfg, **kwargs) -> nn.Module``. The built-in families are lazy entries, so that a
#: config can be validated (and ``add_model_config`` called) before anything imports the factories.
FAMILIES = Registry("model family")
FAMILIES.register("clip", "daclip_lora.clip.factory:build_clip")
FAMILIES.register("daclip", "daclip_lora.clip.factory:build_daclip")


class ConfigError(ValueError):
    """A model config file is malformed or incomplete."""


def _natural_key(s: str) -> List[Union[int, str]]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


# ---------------------------------------------------------------------------- families
def register_family(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``factory(model_cfg: dict, **kwargs) -> nn.Module`` for a family."""
    return FAMILIES.register(name)


def list_families() -> List[str]:
    return sorted(FAMILIES)


def get_family_factory(family: str) -> Callable[..., Any]:
    return FAMILIES.get(family)


# ----------------------------------------------------------------------------- configs
def _check_keys(cfg: Dict[str, Any], source: str) -> None:
    """Required keys present and no unknown key, per section."""
    for section, required in _REQUIRED.items():
        block = cfg if section is None else cfg.get(section)
        where = "top level" if section is None else section
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {section!r} must be an object, got {type(block).__name__}")
        missing = [k for k in required if k not in block]
        if missing:
            raise ConfigError(f"{source}: missing required key {missing[0]!r} in {where} "
                              f"(required there: {', '.join(required)})")
    for section, fields in _FIELDS.items():
        unknown = [key for key in cfg[section] if key not in fields]
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} in {section}.{suggest(unknown[0], fields)}")
    unknown = [key for key in cfg if key not in (*_REQUIRED[None], *_CLIP_KEYS, *META_KEYS)]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r}."
                          f"{suggest(unknown[0], [*_CLIP_KEYS, *META_KEYS])}")


def validate_model_config(cfg: Any, source: str = "<config>") -> Dict[str, Any]:
    """Check a model config dict; raise :class:`ConfigError` naming ``source`` and the bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a model config must be a JSON object, got {type(cfg).__name__}")
    _check_keys(cfg, source)
    family = cfg.get("family", DEFAULT_FAMILY)
    if family not in FAMILIES:
        raise ConfigError(
            f"{source}: unknown family {family!r}; registered: {list_families()}{suggest(family, FAMILIES)}"
        )
    if family == DEFAULT_FAMILY:
        vision = cfg["vision_cfg"]
        if not isinstance(vision["layers"], int) or vision.get("timm_model_name"):
            raise ConfigError(
                f"{source}: DA-CLIP needs a ViT vision tower: vision_cfg.layers must be an integer "
                f"and timm_model_name unset (got layers={vision['layers']!r})"
            )
    return cfg


def _read_config(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read model config ({e.strerror})") from e
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    return validate_model_config(cfg, str(path))


def add_model_config(path: Union[str, Path]) -> List[str]:
    """Register a model config file, or every ``*.json`` in a folder; the file stem is the name.

    Every file is validated: a malformed or incomplete one raises :class:`ConfigError` naming the
    file and the problem (nothing from that call is registered then).

    Returns:
        the names registered by this call.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no *.json model configs in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"model config path {path} does not exist (expected a .json file or a folder)")
    loaded = {f.stem: (f.resolve(), _read_config(f)) for f in files}
    for name, (source, cfg) in loaded.items():
        previous = _CONFIG_SOURCES.get(name)
        if previous is not None and previous != source:
            logger.info("model config %r from %s replaces the one from %s", name, source, previous)
        _MODEL_CONFIGS[name] = cfg
        _CONFIG_SOURCES[name] = source
    return list(loaded)


def list_models(family: Optional[str] = None) -> List[str]:
    """Names of the registered model configs, optionally only those of one family."""
    names = [n for n, c in _MODEL_CONFIGS.items() if family is None or get_model_family(c) == family]
    return sorted(names, key=_natural_key)


def get_model_config(model_name: str) -> Optional[Dict[str, Any]]:
    """A deep copy of the registered config, or ``None`` (like ``open_clip.get_model_config``)."""
    cfg = _MODEL_CONFIGS.get(model_name)
    return deepcopy(cfg) if cfg is not None else None


def get_model_family(cfg: Dict[str, Any]) -> str:
    return cfg.get("family", DEFAULT_FAMILY)


def _builtin_config_dir() -> Path:
    folder = Path(__file__).resolve().parent / "model_configs"
    if not folder.is_dir():
        raise FileNotFoundError(f"daclip_lora's model_configs folder is missing ({folder}); reinstall the package")
    return folder


# The shipped configs are registered with the registry itself, so that any first call (``get_model_config``,
# ``list_models``, ``add_model_config``, a factory) sees them.
add_model_config(_builtin_config_dir())
