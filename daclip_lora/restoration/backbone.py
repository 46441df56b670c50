"""The diffusion backbone adapter: everything that depends on *which* Stable Diffusion family is used.

Trainers, the pipeline, the CLI and the demo never touch diffusers components directly for these jobs:
they ask the backbone to load the components, encode prompts, move images in and out of latent space
(whole or tiled), give the UNet its extra call arguments, and save LoRA weights. :class:`SDBackbone`
covers SD 1.x and 2.x (one text encoder, 77 positions, no added conditions).

Adding SDXL means one more subclass here: load the two text encoders and tokenizers, concatenate their
hidden states in :meth:`encode_prompt` and return the pooled embedding with them, return
``added_cond_kwargs`` (``text_embeds``, ``time_ids``) from :meth:`unet_kwargs`, and save with
``StableDiffusionXLPipeline.save_lora_weights`` in :meth:`save_lora`; then register it in
:func:`backbone_for`. The trainers and the pipeline do not change.

The diffusion maths shared by training and inference is in :mod:`daclip_lora.restoration.diffusion`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .tiling import tiled_map

logger = logging.getLogger(__name__)

__all__ = ["SDComponents", "SDBackbone", "backbone_for", "load_sd_components", "encode_prompt", "SD_SUBFOLDERS"]

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler: Any


def load_sd_components(base: Union[str, Path], dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load a Stable Diffusion folder in diffusers format (weights cast to ``dtype``), frozen and in eval mode.

    Raises:
        FileNotFoundError: the folder or one of its sub-folders is missing (the message lists which).
        ValueError: the folder is SDXL (two text encoders) or mixes components of different SD versions.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = Path(base).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"Stable Diffusion base folder {base} does not exist; set sd.base to a diffusers "
                                f"folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    if (base / "text_encoder_2").is_dir():
        raise ValueError(f"{base} is an SDXL folder (it has text_encoder_2/); only SD 1.x/2.x backbones are "
                         f"implemented (see daclip_lora/backbone.py for what an SDXL adapter needs)")
    missing = [s for s in SD_SUBFOLDERS if not (base / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{base} is not a Stable Diffusion folder in diffusers format: missing "
                                f"{', '.join(s + '/' for s in missing)} (convert single-file checkpoints with "
                                f"diffusers' convert_original_stable_diffusion_to_diffusers.py)")
    sd = SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(str(base / "tokenizer")),
        text_encoder=CLIPTextModel.from_pretrained(str(base / "text_encoder"), torch_dtype=dtype),
        vae=AutoencoderKL.from_pretrained(str(base / "vae"), torch_dtype=dtype),
        unet=UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=dtype),
        scheduler=DDPMScheduler.from_pretrained(str(base / "scheduler")),
    )
    cross, hidden = sd.unet.config.cross_attention_dim, sd.text_encoder.config.hidden_size
    if cross != hidden:
        raise ValueError(f"{base}: the UNet's cross_attention_dim is {cross} but the text encoder's hidden size is "
                         f"{hidden}; the folder mixes components of different Stable Diffusion versions")
    for module in (sd.text_encoder, sd.vae, sd.unet):
        module.requires_grad_(False)
        module.eval()
    return sd


def encode_prompt(tokenizer, text_encoder: nn.Module, prompts: Sequence[str], reserved: int = 0) -> torch.Tensor:
    """Text hidden states ``(B, 77, D)``; prompts are truncated to leave ``reserved`` trailing slots free."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_len - reserved,
                    return_tensors="pt").input_ids
    if reserved:
        pad = torch.full((ids.shape[0], reserved), tokenizer.pad_token_id, dtype=ids.dtype)
        ids = torch.cat([ids, pad], dim=1)
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


class SDBackbone:
    """Stable Diffusion 1.x / 2.x: one CLIP text encoder, 77 positions, AutoencoderKL, no added conditions."""

    family = "sd"
    unet_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(self, components: SDComponents):
        self.components = components

    @classmethod
    def load(cls, base: Union[str, Path], dtype: torch.dtype = torch.float32) -> "SDBackbone":
        return cls(load_sd_components(base, dtype))

    # the components, by name
    @property
    def unet(self) -> nn.Module:
        return self.components.unet

    @property
    def vae(self) -> nn.Module:
        return self.components.vae

    @property
    def text_encoder(self) -> nn.Module:
        return self.components.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.components.tokenizer

    @property
    def scheduler(self) -> Any:
        return self.components.scheduler

    @property
    def vae_factor(self) -> int:
        """Pixels per latent position (8 for SD; 2**(levels-1) in general)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def native_resolution(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.5, 768 for SD 2.1)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return int(size) * self.vae_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    # ------------------------------------------------------------------------------ text
    def encode_prompt(self, prompts: Sequence[str], reserved: int = 0) -> torch.Tensor:
        return encode_prompt(self.tokenizer, self.text_encoder, prompts, reserved)

    def unet_kwargs(self, batch: int, device: torch.device) -> Dict[str, Any]:
        """Extra keyword arguments of every UNet call (SD 1.x/2.x: none; SDXL: ``added_cond_kwargs``)."""
        return {}

    # ---------------------------------------------------------------------------- latents
    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                       on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Scaled posterior-mean latents of ``images`` (``(B, 3, H, W)`` in ``[0, 1]``, sides multiples of the
        VAE factor). ``tile`` (pixels) encodes overlapping tiles and blends them (Gaussian weights);
        ``on_tile(done, total)`` follows them."""
        vae = self.vae
        p = next(vae.parameters())
        x = (images.to(p.device, p.dtype) * 2 - 1)

        def encode(t: torch.Tensor) -> torch.Tensor:
            return vae.encode(t).latent_dist.mean * vae.config.scaling_factor

        if tile:  # GroupNorm statistics shared by all tiles: no seams, no per-tile tone (tiling.SharedGroupNorm)
            return tiled_map(encode, x, tile, overlap, scale=1.0 / self.vae_factor, multiple=self.vae_factor,
                             shared_norms=vae, on_tile=on_tile)
        return encode(x)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                       on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents; ``tile`` (pixels) decodes overlapping tiles and blends them."""
        return self.decode(latents, tile, overlap, on_tile)

    def decode(self, latents: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
               on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """:meth:`decode_latents` with autograd on: pixel-space losses through the frozen decoder."""
        vae = self.vae
        p = next(vae.parameters())
        z = latents.to(p.device, p.dtype) / vae.config.scaling_factor

        def decode(t: torch.Tensor) -> torch.Tensor:
            return vae.decode(t).sample

        if tile:
            f = self.vae_factor
            out = tiled_map(decode, z, max(1, tile // f), max(0, overlap // f), scale=float(f), shared_norms=vae,
                            on_tile=on_tile)
        else:
            out = decode(z)
        return ((out + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------------------- LoRA
    @classmethod
    def save_lora(cls, out_dir: Union[str, Path], unet: nn.Module, text_encoder: Optional[nn.Module] = None,
                  weight_name: str = "pytorch_lora_weights.safetensors") -> None:
        """Write the LoRA of ``unet`` (and ``text_encoder``) in diffusers format, configs in the metadata."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(module: nn.Module) -> Dict[str, torch.Tensor]:
            state = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

        kwargs: Dict[str, Any] = {"unet_lora_layers": layers(unet),
                                  "unet_lora_adapter_metadata": _lora_metadata(unet)}
        if text_encoder is not None and getattr(text_encoder, "peft_config", None):
            kwargs["text_encoder_lora_layers"] = layers(text_encoder)
            kwargs["text_encoder_lora_adapter_metadata"] = _lora_metadata(text_encoder)
        StableDiffusionPipeline.save_lora_weights(str(out_dir), weight_name=weight_name, **kwargs)

    # ----------------------------------------------------------------------------- device
    def to(self, device: Union[str, torch.device], dtype: Optional[torch.dtype] = None) -> "SDBackbone":
        for m in (self.text_encoder, self.vae, self.unet):
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self


def _lora_metadata(module: nn.Module) -> Dict[str, Any]:
    cfg = module.peft_config["default"].to_dict()
    targets = cfg["target_modules"]
    cfg["target_modules"] = sorted(targets) if isinstance(targets, (set, list)) else targets
    return cfg


def backbone_for(components: SDComponents) -> SDBackbone:
    """The adapter for loaded components (SD 1.x/2.x today)."""
    return SDBackbone(components)
