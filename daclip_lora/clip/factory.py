"""open_clip-compatible factories for DA-CLIP models; other model names pass through to open_clip.

The public functions mirror ``open_clip``'s names and signatures so that UIR scripts can use
``import daclip_lora as open_clip`` unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import open_clip
import open_clip.factory as _oc_factory
import torch
from open_clip import CLIP, SimpleTokenizer, get_cast_dtype, set_model_preprocess_cfg
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2, merge_preprocess_kwargs
from torch import nn

from .._utils.suggest import suggest
from .checkpoint import load_checkpoint, read_safetensors_metadata
from .model import DaCLIP
from .registry import META_KEYS, get_family_factory, get_model_config, get_model_family
from .registry import list_models as _list_registered

logger = logging.getLogger(__name__)

__all__ = [
    "UnknownModelError",
    "create_model",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "get_tokenizer",
    "is_daclip_lora_model",
    "list_models",
    "load_daclip",
    "register_with_open_clip",
]

_OPEN_CLIP_LOADER_KWARGS = ("cache_dir", "pretrained_image", "pretrained_text", "pretrained_hf",
                           "pretrained_image_path", "pretrained_text_path")
PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "fp16", "bf16", "pure_fp16", "pure_bf16")
# The stock open_clip functions, captured before register_with_open_clip() can patch them.
_OPEN_CLIP: Dict[str, Callable[..., Any]] = {
    "create_model": _oc_factory.create_model,
    "create_model_and_transforms": _oc_factory.create_model_and_transforms,
    "create_model_from_pretrained": _oc_factory.create_model_from_pretrained,
    "get_tokenizer": _oc_factory.get_tokenizer,
    "list_models": _oc_factory.list_models,
}


class UnknownModelError(ValueError):
    """The model name is neither a daclip_lora config nor an open_clip one."""


# --------------------------------------------------------------------------- families
# Registered in ``registry.FAMILIES`` as lazy entries (``"daclip_lora.clip.factory:build_clip"``).
def build_clip(model_cfg: Dict[str, Any], cast_dtype: Optional[torch.dtype] = None, **kwargs: Any) -> CLIP:
    """A plain ``open_clip.CLIP`` from a config (``custom_text`` is ignored: DA-CLIP key names)."""
    cfg = {k: v for k, v in model_cfg.items() if k not in META_KEYS}
    cfg.update(kwargs)
    return CLIP(**cfg, cast_dtype=cast_dtype)


def build_daclip(model_cfg: Dict[str, Any], cast_dtype: Optional[torch.dtype] = None, **kwargs: Any) -> DaCLIP:
    """A :class:`DaCLIP` around a plain CLIP built from the config, with CLIP locked."""
    model = DaCLIP(build_clip(model_cfg, cast_dtype=cast_dtype, **kwargs))
    model.lock_clip()
    return model


# ----------------------------------------------------------------------------- helpers
def is_daclip_lora_model(model_name: str) -> bool:
    """True if ``model_name`` is registered with daclip_lora (not an open_clip pass-through)."""
    return get_model_config(model_name) is not None


def list_models() -> list:
    """daclip_lora's model names followed by open_clip's."""
    return _list_registered() + [n for n in _OPEN_CLIP["list_models"]() if get_model_config(n) is None]


def _check_open_clip_name(model_name: str) -> None:
    schema, identifier = _oc_factory.parse_model_name(model_name)
    if schema is None and identifier.replace("/", "-") not in _OPEN_CLIP["list_models"]():
        raise UnknownModelError(
            f"unknown model {model_name!r}: not a daclip_lora config ({', '.join(_list_registered())}) "
            f"nor an open_clip one.{suggest(model_name, list_models())} Register your own config with "
            f"daclip_lora.add_model_config('path/to/{model_name}.json')."
        )


def _set_device_and_precision(model: nn.Module, device: Union[str, torch.device], precision: str) -> None:
    if precision in ("fp16", "bf16"):
        model.to(device=device)
        open_clip.convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    elif precision in ("pure_fp16", "pure_bf16"):
        model.to(device=device, dtype=torch.float16 if precision == "pure_fp16" else torch.bfloat16)
    else:
        model.to(device=device)


def _check_pretrained_name(model_name: str, pretrained: str) -> None:
    if str(pretrained).endswith(".safetensors"):
        stored = read_safetensors_metadata(pretrained).get("model_name")
        if stored and stored != model_name:
            logger.warning("%s was written for model %r, loading it as %r", pretrained, stored, model_name)


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _open_clip_base(model_name: str, model_cfg: Dict[str, Any]) -> str:
    """The open_clip model whose pretrained tags a DA-CLIP config uses (``base_model``, else the name
    without its ``daclip_`` prefix)."""
    return model_cfg.get("base_model") or (model_name[len("daclip_"):] if model_name.startswith("daclip_")
                                           else model_name)


def resolve_pretrained_tag(model_name: str, model_cfg: Dict[str, Any], tag: str,
                           cache_dir: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """An open_clip pretrained tag of a DA-CLIP model's CLIP (e.g. ``laion2b_s34b_b79k``, ``openai``) as a
    local checkpoint file, through open_clip's own registry and cache (downloaded when online).

    Returns:
        ``(checkpoint path, open_clip's pretrained config of the tag)``.

    Raises:
        FileNotFoundError: ``tag`` is neither a file nor a tag of the base model, or it is not cached and
            cannot be downloaded (offline); the message names the cache folder and how to pass a file.
    """
    import open_clip.pretrained as oc_pretrained

    if "/" in tag or "\\" in tag or Path(tag).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
        raise FileNotFoundError(f"pretrained checkpoint {tag!r} for {model_name!r} does not exist; check the path "
                                f"(or pass an open_clip tag of the base CLIP, e.g. 'laion2b_s34b_b79k')")
    base = _open_clip_base(model_name, model_cfg)
    tag_cfg = oc_pretrained.get_pretrained_cfg(base, tag)
    if not tag_cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(base)
        raise FileNotFoundError(
            f"pretrained {tag!r} for {model_name!r} is neither a file nor an open_clip tag of {base}"
            f"{suggest(tag, tags)} (tags: {', '.join(tags) or 'none'}); pass a checkpoint file path or a tag")
    try:
        path = oc_pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # offline (HF_HUB_OFFLINE), no network, HTTP errors: all mean "not available here"
        where = cache_dir or _hub_cache()
        raise FileNotFoundError(
            f"pretrained tag {tag!r} of {base} (for {model_name!r}) is not in open_clip's cache ({where}) and "
            f"could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"connect once to download it, or pass the checkpoint file: pretrained='/path/to/"
            f"open_clip_pytorch_model.bin'") from None
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"open_clip resolved pretrained tag {tag!r} of {base} to {path!r}, which is not "
                                f"a file; pass a checkpoint file path instead")
    logger.info("pretrained tag %r of %s -> %s", tag, base, path)
    return str(path), dict(tag_cfg)


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return "~/.cache/huggingface/hub"


# --------------------------------------------------------------------------- factories
def create_model(
    model_name: str,
    pretrained: Optional[str] = None,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_patch_dropout: Optional[float] = None,
    force_image_size: Optional[Union[int, Tuple[int, int]]] = None,
    force_preprocess_cfg: Optional[Dict[str, Any]] = None,
    force_context_length: Optional[int] = None,
    output_dict: Optional[bool] = None,
    require_pretrained: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """Create a model by name.

    DA-CLIP names (see :func:`list_models`) are built here; any other name is passed unchanged to
    ``open_clip.create_model``.

    Args:
        model_name: e.g. ``'daclip_ViT-B-32'`` (ours) or ``'ViT-B-32'`` (open_clip).
        pretrained: for DA-CLIP models, a checkpoint file: a released DA-CLIP checkpoint
            (loaded strictly into the whole model) or a plain CLIP one (loaded into ``model.clip``,
            then the controller is initialised from it); or an open_clip pretrained *tag* of the base
            CLIP (``'laion2b_s34b_b79k'``, ``'openai'``: resolved through open_clip's registry and cache,
            see :func:`resolve_pretrained_tag`).
        precision: one of ``fp32, amp, amp_bf16, fp16, bf16, pure_fp16, pure_bf16`` (open_clip's).
        device: device to put the model on; ``'meta'`` builds it without allocating weights
            (for parameter counts and state-dict layouts).
        jit: TorchScript; not supported for DA-CLIP models.
        force_quick_gelu, force_patch_dropout, force_image_size, force_context_length: override the
            config as in open_clip.
        force_custom_text: accepted for compatibility; DA-CLIP always wraps a plain ``CLIP``.
        force_preprocess_cfg: override entries of the preprocessing config (mean, std, ...).
        output_dict: set ``output_dict`` on the inner CLIP.
        require_pretrained: raise if ``pretrained`` is not given.
        **model_kwargs: extra ``open_clip.CLIP`` constructor arguments (highest priority); for DA-CLIP
            models also ``controller_init`` (``'by_name'``, default: the controller is an exact copy of
            CLIP's vision tower, as the paper describes; ``'reference'``: the original code's by-position
            copy, for bit-exact reproduction) and ``lock_clip`` (default ``True``: CLIP frozen, the
            paper's method; ``False`` trains it too, as the original script does from a DA-CLIP file).

    Returns:
        the model (a :class:`DaCLIP` for DA-CLIP names), in eval mode like open_clip's.

    Raises:
        UnknownModelError: the name is neither ours nor open_clip's (close matches are listed).
        FileNotFoundError: ``pretrained`` does not exist.
        CheckpointError: the checkpoint is unreadable or does not fit.
    """
    model_cfg = get_model_config(model_name)
    if model_cfg is None:
        _check_open_clip_name(model_name)
        return _OPEN_CLIP["create_model"](
            model_name, pretrained, precision=precision, device=device, jit=jit,
            force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
            force_patch_dropout=force_patch_dropout, force_image_size=force_image_size,
            force_preprocess_cfg=force_preprocess_cfg, force_context_length=force_context_length,
            output_dict=output_dict, require_pretrained=require_pretrained, **model_kwargs,
        )
    loader = _LoaderOptions.pop_from(model_kwargs)
    pretrained = pretrained if loader.load_weights else None
    _check_arguments(model_name, pretrained, precision, jit, force_custom_text, require_pretrained)
    tag_cfg: Dict[str, Any] = {}  # resolved after the cheap checks: it may download
    if pretrained and not Path(pretrained).expanduser().is_file():
        pretrained, tag_cfg = resolve_pretrained_tag(model_name, model_cfg, str(pretrained), loader.cache_dir)
    _apply_overrides(model_name, model_cfg, tag_cfg, force_quick_gelu, force_patch_dropout, force_image_size,
                     force_context_length)
    preprocess_cfg = {**asdict(PreprocessCfg()), **model_cfg.get("preprocess_cfg", {}),
                      **{k: v for k, v in tag_cfg.items() if k in _PREPROCESS_KEYS}}
    model = _build_and_load(model_name, model_cfg, pretrained, precision, device, loader, model_kwargs)
    _set_device_and_precision(model, device, precision)
    inner = model.clip if isinstance(model, DaCLIP) else model
    if output_dict is not None:
        inner.output_dict = output_dict
    preprocess_cfg["size"] = inner.visual.image_size
    preprocess_cfg.update(force_preprocess_cfg or {})
    set_model_preprocess_cfg(inner, preprocess_cfg)
    return model.eval()


@dataclass
class _LoaderOptions:
    """Loader options of ``open_clip.create_model`` (which open_clip's own ``create_model_and_transforms``
    passes along once :func:`register_with_open_clip` is active) and ours; tower-specific weights do not apply."""

    load_weights: bool = True
    controller_init: str = "by_name"
    lock_clip: bool = True
    cache_dir: Optional[str] = None

    @classmethod
    def pop_from(cls, model_kwargs: Dict[str, Any]) -> "_LoaderOptions":
        out = cls(load_weights=model_kwargs.pop("load_weights", True),
                  controller_init=model_kwargs.pop("controller_init", "by_name"),
                  lock_clip=model_kwargs.pop("lock_clip", True), cache_dir=model_kwargs.get("cache_dir"))
        if out.controller_init not in ("by_name", "reference"):
            raise ValueError(f"controller_init must be 'by_name' or 'reference', got {out.controller_init!r}")
        if not model_kwargs.pop("weights_only", True):
            raise ValueError("weights_only=False is refused: daclip_lora never unpickles arbitrary objects")
        for key in _OPEN_CLIP_LOADER_KWARGS:
            model_kwargs.pop(key, None)
        return out


def _check_arguments(model_name: str, pretrained: Optional[str], precision: str, jit: bool,
                     force_custom_text: bool, require_pretrained: bool) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if jit:
        raise ValueError("jit=True is not supported for DA-CLIP models; use torch.compile(model) instead")
    if force_custom_text:
        logger.info("force_custom_text ignored: DA-CLIP always wraps a plain open_clip CLIP")
    if require_pretrained and not pretrained:
        raise ValueError(f"model {model_name!r} requires pretrained=<checkpoint file>, got {pretrained!r}")


def _apply_overrides(model_name: str, model_cfg: Dict[str, Any], tag_cfg: Dict[str, Any], force_quick_gelu: bool,
                     force_patch_dropout: Optional[float], force_image_size: Any,
                     force_context_length: Optional[int]) -> None:
    """open_clip's ``force_*`` arguments, and QuickGELU when the pretrained tag was trained with it."""
    if tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
        logger.info("pretrained tag of %s was trained with QuickGELU: building %s with quick_gelu=True",
                    _open_clip_base(model_name, model_cfg), model_name)
        model_cfg["quick_gelu"] = True
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    if force_patch_dropout is not None:
        model_cfg["vision_cfg"]["patch_dropout"] = force_patch_dropout
    if force_image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = force_image_size
    if force_context_length is not None:
        model_cfg["text_cfg"]["context_length"] = force_context_length


def _build_and_load(model_name: str, model_cfg: Dict[str, Any], pretrained: Optional[str], precision: str,
                    device: Union[str, torch.device], loader: _LoaderOptions, model_kwargs: Dict[str, Any]
                    ) -> nn.Module:
    """The family's model (on the meta device when asked), with the checkpoint loaded and CLIP (un)locked."""
    factory = get_family_factory(get_model_family(model_cfg))
    on_meta = torch.device(device).type == "meta"
    if on_meta and pretrained:
        raise ValueError("device='meta' builds a model without weights; it cannot load pretrained weights")
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = factory(model_cfg, cast_dtype=get_cast_dtype(precision), **model_kwargs)
    if pretrained:
        _check_pretrained_name(model_name, pretrained)
        result = load_checkpoint(model, Path(pretrained).expanduser(), controller_init=loader.controller_init)
        logger.info("loaded %s checkpoint %s into %s", result.kind, pretrained, model_name)
    else:
        logger.info("no pretrained weights for %r: randomly initialised", model_name)
    if not loader.lock_clip:
        model.clip.requires_grad_(True)
        logger.info("lock_clip=False: the wrapped CLIP of %s is trainable", model_name)
    return model


def _model_and_preprocess(model_name, pretrained, precision, device, mean, std, interpolation, resize_mode,
                          **kwargs: Any) -> Tuple[nn.Module, PreprocessCfg]:
    force_pp = merge_preprocess_kwargs({}, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode)
    model = create_model(model_name, pretrained, precision=precision, device=device,
                         force_preprocess_cfg=force_pp, **kwargs)
    return model, PreprocessCfg(**model.visual.preprocess_cfg)


def create_model_and_transforms(
    model_name: str,
    pretrained: Optional[str] = None,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    image_mean: Optional[Tuple[float, ...]] = None,
    image_std: Optional[Tuple[float, ...]] = None,
    image_interpolation: Optional[str] = None,
    image_resize_mode: Optional[str] = None,
    aug_cfg: Optional[Union[Dict[str, Any], AugmentationCfg]] = None,
    **kwargs: Any,
) -> Tuple[nn.Module, Callable, Callable]:
    """``(model, preprocess_train, preprocess_val)``, like ``open_clip.create_model_and_transforms``.

    Other keyword arguments go to :func:`create_model`.
    """
    if get_model_config(model_name) is None:
        _check_open_clip_name(model_name)
        return _OPEN_CLIP["create_model_and_transforms"](
            model_name, pretrained, precision=precision, device=device, image_mean=image_mean,
            image_std=image_std, image_interpolation=image_interpolation,
            image_resize_mode=image_resize_mode, aug_cfg=aug_cfg, **kwargs,
        )
    model, pp_cfg = _model_and_preprocess(model_name, pretrained, precision, device, image_mean, image_std,
                                          image_interpolation, image_resize_mode, **kwargs)
    return (model, image_transform_v2(pp_cfg, is_train=True, aug_cfg=aug_cfg),
            image_transform_v2(pp_cfg, is_train=False))


def create_model_from_pretrained(
    model_name: str,
    pretrained: Optional[str] = None,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    image_mean: Optional[Tuple[float, ...]] = None,
    image_std: Optional[Tuple[float, ...]] = None,
    image_interpolation: Optional[str] = None,
    image_resize_mode: Optional[str] = None,
    return_transform: bool = True,
    **kwargs: Any,
) -> Union[nn.Module, Tuple[nn.Module, Callable]]:
    """Model with required pretrained weights, and its eval transform (open_clip's signature).

    For DA-CLIP the transform is resize 224 (bicubic, shortest side), centre crop, OpenAI mean/std.

    Example:
        >>> model, preprocess = create_model_from_pretrained('daclip_ViT-B-32', pretrained='daclip_ViT-B-32.pt')
        >>> image_features, degra_features = model.encode_image(preprocess(img)[None], control=True)
    """
    if get_model_config(model_name) is None:
        _check_open_clip_name(model_name)
        return _OPEN_CLIP["create_model_from_pretrained"](
            model_name, pretrained, precision=precision, device=device, image_mean=image_mean,
            image_std=image_std, image_interpolation=image_interpolation,
            image_resize_mode=image_resize_mode, return_transform=return_transform, **kwargs,
        )
    model, pp_cfg = _model_and_preprocess(model_name, pretrained, precision, device, image_mean, image_std,
                                          image_interpolation, image_resize_mode, require_pretrained=True,
                                          **kwargs)
    return (model, image_transform_v2(pp_cfg, is_train=False)) if return_transform else model


def get_tokenizer(model_name: str = "", context_length: Optional[int] = None, **kwargs: Any) -> Callable:
    """The tokenizer of a model: open_clip's BPE ``SimpleTokenizer`` for DA-CLIP names."""
    model_cfg = get_model_config(model_name)
    if model_cfg is None:
        return _OPEN_CLIP["get_tokenizer"](model_name, context_length=context_length, **kwargs)
    return SimpleTokenizer(context_length=context_length or model_cfg["text_cfg"]["context_length"], **kwargs)


# ------------------------------------------------------------------------ open_clip hook
def register_with_open_clip() -> None:
    """Make ``open_clip.create_model*`` / ``get_tokenizer`` / ``list_models`` know DA-CLIP names.

    Opt-in and idempotent. Stock open_clip names still go to the original open_clip functions, so
    they behave exactly as before. ``open_clip.create_model_and_transforms`` and
    ``open_clip.create_model_from_pretrained`` pick the hook up through ``open_clip.factory``.
    """
    patches = {"create_model": create_model, "get_tokenizer": get_tokenizer, "list_models": list_models}
    for name, fn in patches.items():
        for namespace in (open_clip, _oc_factory):
            setattr(namespace, name, fn)
    logger.debug("daclip_lora registered with open_clip: %s", ", ".join(_list_registered()))


def match_model_names(state_dict: Dict[str, torch.Tensor]) -> list:
    """Registered model names whose architecture fits ``state_dict`` exactly (keys and shapes).

    Models are built on the meta device, so this allocates no weights.
    """
    from .checkpoint import checkpoint_kind, fill_aliases

    kind = checkpoint_kind(state_dict)
    wanted = {k: tuple(v.shape) for k, v in (fill_aliases(state_dict) if kind == "daclip" else state_dict).items()}
    names = []
    for name in _list_registered(family=kind):
        model = create_model(name, device="meta")
        target = model if kind == "daclip" else model.clip
        if {k: tuple(v.shape) for k, v in target.state_dict().items()} == wanted:
            names.append(name)
    return names


def load_daclip(model_name: str, pretrained: Optional[str] = None, adapter: Optional[str] = None,
                seed: int = 0) -> nn.Module:
    """A frozen-ready DA-CLIP for conditioning or training: pretrained (or random weights that are a function of
    ``seed``), with a controller LoRA adapter folder merged in if ``adapter`` is given.

    Args:
        model_name: a registered DA-CLIP name, e.g. ``daclip_ViT-B-32``.
        pretrained: a checkpoint file (see :func:`create_model`); ``None`` gives seeded random weights.
        adapter: a controller-LoRA folder written by ``daclip-lora train`` (task controller).
        seed: seeds the random initialisation (the global RNG is left untouched).
    """
    from .lora import load_controller_lora, merge_controller_lora

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(model_name, pretrained=pretrained)
    if adapter:
        load_controller_lora(model, adapter)
        merge_controller_lora(model)
    return model
