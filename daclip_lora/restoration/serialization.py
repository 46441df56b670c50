"""The restoration output folder: write it atomically, read its config, load it into a fresh model.

A folder holds ``pytorch_lora_weights.safetensors`` (diffusers format, LoRA config in its metadata, loadable by
``StableDiffusionPipeline.load_lora_weights``), ``restoration_extras.safetensors`` (every conditioning path's
parameters under its name, the fusion head, the VAE-encoder LoRA, ``conv_in`` when trained in full) and ``restoration.json``: the
:class:`~daclip_lora.restoration.model.RestorationConfig` plus ``format_version`` and the fusion head's state
(``fusion_head: {fitted}``).

This is format 1, the only one (the policy for later ones is in ``docs/design.md``). Folders written by
pre-release development versions (no ``paths`` key) are refused with a line saying how to re-make them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .._utils.io import atomic_dir
from .backbone import SDBackbone
from .locate import CONFIG_NAME
from .lora import add_restoration_lora, add_text_encoder_lora
from .model import RestorationConfig, RestorationUNet

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "EXTRAS_NAME", "FORMAT_VERSION", "LORA_WEIGHT_NAME", "load_restoration",
           "read_restoration_config", "save_restoration"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EXTRAS_NAME = "restoration_extras.safetensors"
#: version of the folder layout this daclip_lora writes and reads
FORMAT_VERSION = 1


def save_restoration(model: RestorationUNet, out_dir: Union[str, Path], text_encoder: Optional[nn.Module] = None,
                     backbone: Optional[SDBackbone] = None) -> Path:
    """Write LoRA (diffusers format), extras and ``restoration.json`` atomically into ``out_dir``.

    ``backbone`` writes the LoRA file in its family's format (SD 1.x/2.x by default).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if model.merged or any(getattr(m, "merged", False) for m in model.unet.modules() if hasattr(m, "lora_A")):
        raise ValueError("this restoration model's LoRA or paths are merged into the UNet (inference); save the "
                         "unmerged model (RestorationPipeline.from_pretrained(..., merge_lora=False))")
    with atomic_dir(out_dir) as tmp:
        (backbone or SDBackbone).save_lora(tmp, model.unet, text_encoder)
        extras = {k: v.detach().float().cpu().contiguous() for k, v in model.extras_state_dict().items()}
        if extras:
            save_file(extras, str(tmp / EXTRAS_NAME), metadata={"format": "pt"})
        record: Dict[str, Any] = {"format_version": FORMAT_VERSION, **asdict(model.config)}
        if model.fusion is not None:
            record["fusion_head"] = model.fusion_state()
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2))
    return out_dir


def _read_record(folder: Path) -> Dict[str, Any]:
    """``restoration.json`` as a dict, its format checked."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a restoration output folder ({CONFIG_NAME} is missing); pass "
                                f"experiments/<name>/models/restoration")
    data = json.loads(path.read_text())
    version = data.get("format_version")
    if "paths" not in data:
        raise ValueError(f"{path} was written by a pre-release daclip_lora (format {version or 1} without "
                         f"conditioning paths), which this version does not read: re-make it by training again "
                         f"(daclip-lora train -opt <its options.yml>)")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}; this daclip_lora reads {FORMAT_VERSION}: "
                         f"upgrade daclip_lora (pip install -U daclip_lora)")
    return data


def read_restoration_config(folder: Union[str, Path]) -> RestorationConfig:
    """The :class:`RestorationConfig` of a saved folder; relative base-model paths resolve against it.

    Raises:
        FileNotFoundError: ``folder`` has no ``restoration.json``.
        ValueError: the folder was written by another daclip_lora (``format_version``, or a pre-release one).
    """
    folder = Path(folder)
    data = _read_record(folder)
    known = {f for f in RestorationConfig.__dataclass_fields__}
    # relative paths of the base models resolve against this folder when they exist there (a folder that
    # travels with its base models, like the shipped tiny restorer), else they are kept as written
    for key in ("base", "daclip_pretrained", "daclip_adapter"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).exists():
            data[key] = str((folder / value).resolve())
    return RestorationConfig(**{k: v for k, v in data.items() if k in known})


def _load_unet_lora(model: RestorationUNet, lora_path: Path, state: Dict[str, torch.Tensor]) -> None:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(lora_path), framework="pt") as f:
        metadata = f.metadata() or {}
    unet_state = convert_unet_state_dict_to_peft({k[len("unet."):]: v for k, v in state.items()
                                                  if k.startswith("unet.")})
    flat = json.loads(metadata.get("lora_adapter_metadata", "{}"))  # diffusers stores {"unet.r": 8, ...}
    unet_meta = {k[len("unet."):]: v for k, v in flat.items() if k.startswith("unet.")}
    if not getattr(model.unet, "peft_config", None):
        saved = LoraConfig(**{k: v for k, v in unet_meta.items() if k in LoraConfig.__dataclass_fields__}) \
            if unet_meta else None
        add_restoration_lora(model, model.config.lora, config=saved)
    try:
        incompatible = set_peft_model_state_dict(model.unet, unet_state, adapter_name="default")
    except RuntimeError as e:  # size mismatch
        raise ValueError(f"{lora_path} does not fit this UNet ({str(e).splitlines()[-1].strip()}); it was "
                         f"trained on another base model or with another LoRA rank") from None
    unexpected = list(getattr(incompatible, "unexpected_keys", None) or [])
    if unexpected or not unet_state:
        raise ValueError(f"{lora_path} does not fit this UNet: {len(unexpected)} unexpected LoRA tensors "
                         f"(e.g. {unexpected[:2]}); it was trained on another base model or LoRA targets")


def _load_text_encoder_lora(model: RestorationUNet, text_encoder: nn.Module, lora_path: Path,
                            state: Dict[str, torch.Tensor]) -> None:
    from diffusers.utils import convert_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    te_state = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if not te_state:
        return
    if not getattr(text_encoder, "peft_config", None):
        add_text_encoder_lora(text_encoder, model.config.text_encoder_lora or {})
    try:
        set_peft_model_state_dict(text_encoder, convert_state_dict_to_peft(te_state), adapter_name="default")
    except RuntimeError as e:  # size mismatch: dozens of lines from load_state_dict
        raise ValueError(f"{lora_path}: its text-encoder LoRA does not fit this text encoder "
                         f"({str(e).splitlines()[-1].strip()}); it was trained with another "
                         f"sd.text_encoder_lora rank or on another base model") from None


def load_restoration(model: RestorationUNet, folder: Union[str, Path], text_encoder: Optional[nn.Module] = None,
                     ) -> None:
    """Load a saved folder into a freshly built :class:`RestorationUNet` (and text encoder).

    Raises:
        FileNotFoundError: the folder has no LoRA file.
        ValueError: the weights do not fit the model, or the folder is from a newer daclip_lora.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    lora_path = folder / LORA_WEIGHT_NAME
    if not lora_path.is_file():
        raise FileNotFoundError(f"{folder} has no {LORA_WEIGHT_NAME}; pass the folder a restoration run wrote "
                                f"(experiments/<name>/models/restoration)")
    record = _read_record(folder) if (folder / CONFIG_NAME).is_file() else {}
    state = load_file(str(lora_path))
    _load_unet_lora(model, lora_path, state)
    if (folder / EXTRAS_NAME).is_file():
        model.load_extras(load_file(str(folder / EXTRAS_NAME)), record.get("fusion_head"))
    elif model.extras_state_dict():  # the paths would stay at zero and the head unfitted: not the saved model
        raise FileNotFoundError(f"{folder / EXTRAS_NAME} is missing, but this model's restoration.json has "
                                f"weights there ({', '.join(sorted({k.split('.')[0] for k in model.extras_state_dict()}))}"
                                f"); copy the whole folder")
    if text_encoder is not None:
        _load_text_encoder_lora(model, text_encoder, lora_path, state)
