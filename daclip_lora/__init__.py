"""daclip_lora: DA-CLIP on upstream open_clip, with LoRA for the controller and for Stable Diffusion.

``import daclip_lora as open_clip`` works as a drop-in for UIR scripts: the factories below know the
DA-CLIP model names, and every other open_clip name is looked up in open_clip itself.
"""

from __future__ import annotations

from typing import Any, List

from ._upstream import bind_open_clip as _bind_open_clip

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

from .checkpoint import (
    CheckpointError,
    LoadResult,
    checkpoint_kind,
    convert_checkpoint,
    load_checkpoint,
    load_state_dict,
)
from .factory import (
    UnknownModelError,
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_tokenizer,
    is_daclip_lora_model,
    list_models,
    register_with_open_clip,
)
from .loss import ClipLoss, DaClipLoss, create_loss
from .model import ControlTransformer, DaCLIP
from .registry import ConfigError, add_model_config, get_model_config, list_families, register_family

__version__ = "0.1.0"

__all__ = [
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


def __getattr__(name: str) -> Any:
    """Fall back to open_clip for any other public name (drop-in use), e.g. ``ClipLoss``."""
    if not name.startswith("_") and hasattr(_open_clip, name):
        return getattr(_open_clip, name)
    raise AttributeError(f"module 'daclip_lora' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | {n for n in dir(_open_clip) if not n.startswith("_")})
