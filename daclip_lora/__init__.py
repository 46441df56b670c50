"""daclip_lora: DA-CLIP on upstream open_clip, with LoRA for the controller and for Stable Diffusion.

``import daclip_lora as open_clip`` works as a drop-in for UIR scripts: the factories below know the
DA-CLIP model names, and every other open_clip name is looked up in open_clip itself.
"""

from __future__ import annotations

from typing import Any, List

from .clip._upstream import bind_open_clip as _bind_open_clip

_bind_open_clip()  # before anything imports open_clip: a UIR checkout's open_clip/ fork must not shadow it

import open_clip as _open_clip  # noqa: E402
from open_clip import (  # noqa: E402
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    CLIP,
    SimpleTokenizer,
    image_transform,
    tokenize,
)

from .clip.checkpoint import (
    CheckpointError,
    LoadResult,
    checkpoint_kind,
    convert_checkpoint,
    load_checkpoint,
    load_state_dict,
)
from .clip.factory import (
    UnknownModelError,
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_tokenizer,
    is_daclip_lora_model,
    list_models,
    register_with_open_clip,
)
from .clip.loss import ClipLoss, DaClipLoss, create_loss
from .clip.model import ControlTransformer, DaCLIP
from ._utils.version import __version__  # noqa: F401  (re-exported)
from .clip.registry import ConfigError, add_model_config, get_model_config, list_families, register_family


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


#: The controller LoRA and restoration API, imported on first use (diffusers and peft are heavy).
_LAZY = {
    "LoraSpec": "._utils.lora", "AdapterError": "._utils.lora",
    "add_controller_lora": ".clip.lora", "load_controller_lora": ".clip.lora", "save_controller_lora": ".clip.lora",
    "merge_controller_lora": ".clip.lora",
    "RestorationPipeline": ".restoration.pipeline", "RestorationConfig": ".restoration.model",
    "RestorationUNet": ".restoration.model", "FusionHead": ".restoration.fusion",
    "add_unet_lora": ".restoration.lora", "save_restoration": ".restoration.serialization",
    "load_restoration": ".restoration.serialization", "check_dependencies": "._utils.compat",
}


def __getattr__(name: str) -> Any:
    """The lazily imported API above, then open_clip for any other public name (drop-in use), e.g. ``ClipLoss``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if not name.startswith("_") and hasattr(_open_clip, name):
        return getattr(_open_clip, name)
    raise AttributeError(f"module 'daclip_lora' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY) | {n for n in dir(_open_clip) if not n.startswith("_")})
