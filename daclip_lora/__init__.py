"""daclip_lora: DA-CLIP on upstream open_clip, with LoRA for the controller and for Stable Diffusion.

``import daclip_lora as open_clip`` works as a drop-in for UIR scripts: the factories below know the
DA-CLIP model names, and every other open_clip name is looked up in open_clip itself.
"""

from __future__ import annotations

import logging as _logging
from typing import Any, List

# The metrics extra's pyiqa installs bitsandbytes, which peft then imports; on a CPU it logs a warning about
# optional 4-bit kernels on every start. Nothing here uses 4-bit layers.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
from .clip._upstream import bind_open_clip as _bind_open_clip

_bind_open_clip()  # before anything imports open_clip: a UIR checkout's open_clip/ fork must not shadow it

from ._utils.version import __version__  # noqa: E402,F401  (re-exported)

# Everything else is imported on first use (PEP 562 ``__getattr__`` below): open_clip pulls in torch and
# torchvision (seconds), which ``daclip-lora --help`` or a mistyped path must not wait for. The names are those
# of an eager ``from ... import``; ``dir()``, ``from daclip_lora import X`` and ``import daclip_lora as
# open_clip`` see no difference.
_OPEN_CLIP_NAMES = ("OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "CLIP", "SimpleTokenizer", "image_transform",
                    "tokenize")
_API = {
    ".clip.checkpoint": ("CheckpointError", "LoadResult", "checkpoint_kind", "convert_checkpoint",
                         "load_checkpoint", "load_state_dict"),
    ".clip.factory": ("UnknownModelError", "create_model", "create_model_and_transforms",
                      "create_model_from_pretrained", "get_tokenizer", "is_daclip_lora_model", "list_models",
                      "register_with_open_clip"),
    ".clip.loss": ("ClipLoss", "DaClipLoss", "create_loss"),
    ".clip.model": ("ControlTransformer", "DaCLIP"),
    ".clip.registry": ("ConfigError", "add_model_config", "get_model_config", "list_families", "register_family"),
}

__all__ = [
    "__version__",
    "CLIP",
    "CheckpointError",
    "ClipLoss",
    "ConfigError",
    "ControlTransformer",
    "DaCLIP",
    "DaClipLoss",
    "LoadResult",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "SimpleTokenizer",
    "UnknownModelError",
    "add_model_config",
    "checkpoint_kind",
    "convert_checkpoint",
    "create_loss",
    "create_model",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "get_model_config",
    "get_tokenizer",
    "image_transform",
    "is_daclip_lora_model",
    "list_families",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
    "register_family",
    "register_with_open_clip",
    "tokenize",
]


#: Where each public name lives (the controller LoRA and restoration API pull in diffusers and peft).
_LAZY = {
    **{name: module for module, names in _API.items() for name in names},
    **{name: "open_clip" for name in _OPEN_CLIP_NAMES},
    "LoraSpec": "._utils.lora", "AdapterError": "._utils.lora",
    "add_controller_lora": ".clip.lora", "load_controller_lora": ".clip.lora", "save_controller_lora": ".clip.lora",
    "merge_controller_lora": ".clip.lora",
    "RestorationPipeline": ".restoration.pipeline", "RestorationConfig": ".restoration.model",
    "RestorationUNet": ".restoration.model", "FusionHead": ".restoration.fusion",
    "add_unet_lora": ".restoration.lora", "save_restoration": ".restoration.serialization",
    "load_restoration": ".restoration.serialization", "check_dependencies": "._utils.compat",
}


def _open_clip() -> Any:
    """open_clip, with the DA-CLIP configs registered in daclip_lora's own registry (``clip.factory``)."""
    import importlib

    importlib.import_module(".clip.factory", __name__)
    return importlib.import_module("open_clip")


def __getattr__(name: str) -> Any:
    """The API above, imported on first use, then open_clip for any other public name (drop-in use)."""
    import importlib

    if name in _LAZY:
        module = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__ if module.startswith(".") else None), name)
    elif not name.startswith("_") and hasattr(_open_clip(), name):
        value = getattr(_open_clip(), name)
    else:
        raise AttributeError(f"module 'daclip_lora' has no attribute {name!r}")
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY) | {n for n in dir(_open_clip()) if not n.startswith("_")})
