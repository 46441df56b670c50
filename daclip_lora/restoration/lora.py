"""LoRA on the Stable Diffusion UNet, VAE encoder and text encoder (peft), with the default targets."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import torch.nn as nn

from .._utils.lora import LoraSpec, inject_lora
from .backbone import SDBackbone

__all__ = ["TEXT_ENCODER_LORA_TARGETS", "UNET_LORA_TARGETS", "VAE_ENCODER_LORA_TARGETS", "add_restoration_lora",
           "add_text_encoder_lora", "add_unet_lora", "add_vae_encoder_lora", "lora_spec"]

UNET_LORA_TARGETS = SDBackbone.unet_lora_targets
TEXT_ENCODER_LORA_TARGETS = SDBackbone.text_encoder_lora_targets
#: OSEDiff's VAE-encoder targets: every convolution of the encoder (ResNet, shortcut, down-sampling, in and out)
#: and its mid-block attention
VAE_ENCODER_LORA_TARGETS = ("conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "to_q", "to_k", "to_v",
                            "to_out.0")


def lora_spec(options: Any) -> Dict[str, Any]:
    """The LoRA settings of a :class:`~daclip_lora._utils.lora.LoraSpec` (or mapping), as stored in restoration.json."""
    return LoraSpec.coerce(options).to_dict()


def add_unet_lora(unet: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None], config: Any = None) -> None:
    """Freeze the UNet and add a LoRA adapter (peft) on the attention projections.

    ``config`` (a peft ``LoraConfig``, e.g. read from a saved file's metadata) takes precedence over ``spec``.
    """
    unet.requires_grad_(False)
    if config is None:
        spec = LoraSpec.coerce(spec, "sd.lora").validate("sd.lora", allow_blocks=False)
        config = spec.peft_config(spec.targets or UNET_LORA_TARGETS)
    try:
        inject_lora(unet, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in unet.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"UNet LoRA targets {list(config.target_modules)} match no module ({e}); "
                         f"linear layer names in this UNet include: {', '.join(names[:12])}") from None


def add_vae_encoder_lora(encoder: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None]) -> None:
    """Freeze the VAE encoder and add a LoRA adapter (peft) on its convolutions and attention projections
    (:data:`VAE_ENCODER_LORA_TARGETS` unless ``spec.targets``), as OSEDiff and S3Diff train it."""
    _add_lora(encoder, spec, "sd.vae_encoder_lora", "VAE-encoder", VAE_ENCODER_LORA_TARGETS,
              "ResNet convolutions are conv1, conv2, conv_shortcut; down-sampling ones conv")


def _add_lora(module: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None], key: str, what: str,
              targets: Sequence[str], names: str) -> None:
    """Freeze ``module`` and inject the LoRA of ``spec`` (options key ``key``) on ``spec.targets`` or ``targets``;
    targets that match nothing are one line naming them and what the module's layers are called (``names``)."""
    spec = LoraSpec.coerce(spec, key).validate(key, allow_blocks=False)
    module.requires_grad_(False)
    config = spec.peft_config(spec.targets or targets)
    try:
        inject_lora(module, config)
    except ValueError as e:
        raise ValueError(f"{what} LoRA targets {list(config.target_modules)} match no module ({e}); {names}") from None


def add_restoration_lora(model: Any, spec: Union[LoraSpec, Dict[str, Any], None], config: Any = None) -> None:
    """:func:`add_unet_lora` on a :class:`~daclip_lora.restoration.model.RestorationUNet`'s UNet, the VAE-encoder
    LoRA (``config.vae_encoder_lora``), ``conv_in`` trainable (``config.train_conv_in``), then the paths that read
    the LoRA layers (the modulated LoRA). The paths' own parameters are trained in full."""
    add_unet_lora(model.unet, spec, config)
    if model.lq_encoder is not None and not getattr(model.lq_encoder, "peft_config", None):
        add_vae_encoder_lora(model.lq_encoder, model.config.vae_encoder_lora)
    if getattr(model.config, "train_conv_in", False):  # OSEDiff's recipe: the first convolution in full
        model.base_conv_in.requires_grad_(True)
    model.add_lora_paths()
    model.paths.requires_grad_(True)


def add_text_encoder_lora(text_encoder: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None]) -> None:
    """Freeze the text encoder and add a LoRA adapter on its attention projections (or ``spec.targets``)."""
    _add_lora(text_encoder, spec, "sd.text_encoder_lora", "text-encoder", TEXT_ENCODER_LORA_TARGETS,
              "CLIP text encoders name them q_proj, k_proj, v_proj, out_proj, fc1, fc2")
