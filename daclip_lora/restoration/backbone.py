"""The diffusion backbone adapter: everything that depends on *which* Stable Diffusion family is used.

Trainers, the pipeline, the CLI and the demo never touch diffusers components directly for these jobs:
they ask the backbone to load the components, encode prompts, move images in and out of latent space
(whole or tiled), give the UNet its extra call arguments, and save LoRA weights. :class:`SDBackbone`
covers SD 1.x and 2.x (SD-Turbo included: one text encoder, 77 positions, no added conditions);
:class:`SDXLBackbone` covers SDXL (two text encoders side by side, the pooled text embedding and the size
conditions ``time_ids`` as ``added_cond_kwargs``, built for each UNet call from the latents it is given, so
every tile and both halves of a guided batch get theirs). :func:`backbone_for` picks one for loaded
components; a folder of another architecture (an inpainting UNet, the SDXL refiner) is refused in one line.

The diffusion maths shared by training and inference is in :mod:`daclip_lora.restoration.diffusion`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._utils.registry import Registry
from .tiling import tiled_map

logger = logging.getLogger(__name__)

__all__ = ["BACKBONES", "SDComponents", "SDBackbone", "SDXLBackbone", "backbone_for", "load_sd_components",
           "encode_prompt",
           "SD_SUBFOLDERS", "SDXL_SUBFOLDERS"]

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = SD_SUBFOLDERS + ("text_encoder_2", "tokenizer_2")


@dataclass
class SDComponents:
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler: Any
    tokenizer_2: Any = None  # SDXL's second text encoder (with projection) and its tokenizer
    text_encoder_2: Optional[nn.Module] = None

    @property
    def text_encoders(self) -> List[nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def load_sd_components(base: Union[str, Path], dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load a Stable Diffusion folder in diffusers format (SD 1.x/2.x/Turbo or SDXL; weights cast to ``dtype``),
    frozen and in eval mode.

    Raises:
        FileNotFoundError: the folder or one of its sub-folders is missing (the message lists which).
        ValueError: the folder is of an architecture daclip_lora does not restore with (an inpainting or depth
            UNet, the SDXL refiner) or mixes components of different SD versions.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = Path(base).expanduser()
    sdxl = (base / "text_encoder_2").is_dir()
    _check_folder(base, SDXL_SUBFOLDERS if sdxl else SD_SUBFOLDERS)
    sd = SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(str(base / "tokenizer")),
        text_encoder=CLIPTextModel.from_pretrained(str(base / "text_encoder"), torch_dtype=dtype),
        vae=AutoencoderKL.from_pretrained(str(base / "vae"), torch_dtype=dtype),
        unet=UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=dtype),
        scheduler=DDPMScheduler.from_pretrained(str(base / "scheduler")),
    )
    if sdxl:
        sd.tokenizer_2 = CLIPTokenizer.from_pretrained(str(base / "tokenizer_2"))
        sd.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(base / "text_encoder_2"),
                                                                        torch_dtype=dtype)
    _check_architecture(base, sd)
    for module in (*sd.text_encoders, sd.vae, sd.unet):
        module.requires_grad_(False)
        module.eval()
    return sd


def _check_folder(base: Path, subfolders: Sequence[str]) -> None:
    if not base.is_dir():
        raise FileNotFoundError(f"Stable Diffusion base folder {base} does not exist; set sd.base to a diffusers "
                                f"folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    missing = [s for s in subfolders if not (base / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{base} is not a Stable Diffusion folder in diffusers format: missing "
                                f"{', '.join(s + '/' for s in missing)} (convert single-file checkpoints with "
                                f"diffusers' convert_original_stable_diffusion_to_diffusers.py)")


def _check_architecture(base: Path, sd: SDComponents) -> None:
    """One line for a folder daclip_lora cannot restore with, before any shape error deep in a UNet call."""
    cfg, latents = sd.unet.config, sd.vae.config.latent_channels
    if cfg.in_channels != latents or cfg.out_channels != latents:
        raise ValueError(f"{base}: its UNet takes {cfg.in_channels} channels and predicts {cfg.out_channels}, its VAE "
                         f"has {latents} latent channels: an inpainting (9), depth (5) or upscaling (7) UNet is not a "
                         f"text-to-image base; use the text-to-image model of that family (SD 1.5, SD 2.1, "
                         f"SD-Turbo, SDXL base)")
    added = cfg.addition_embed_type
    if added != ("text_time" if sd.text_encoder_2 is not None else None):
        raise ValueError(f"{base}: a UNet with addition_embed_type {added!r} and "
                         f"{len(sd.text_encoders)} text encoder(s) is not a family daclip_lora knows; it reads "
                         f"SD 1.x/2.x folders (no added conditions) and SDXL base folders ('text_time')")
    hidden = sum(te.config.hidden_size for te in sd.text_encoders)
    if cfg.cross_attention_dim != hidden:
        raise ValueError(f"{base}: the UNet's cross_attention_dim is {cfg.cross_attention_dim} but the text "
                         f"encoders give {hidden} features; the folder mixes components of different Stable "
                         f"Diffusion versions")
    if sd.text_encoder_2 is not None:
        expected = 6 * cfg.addition_time_embed_dim + sd.text_encoder_2.config.projection_dim
        if cfg.projection_class_embeddings_input_dim != expected:
            raise ValueError(f"{base}: its UNet's added conditions take {cfg.projection_class_embeddings_input_dim} "
                             f"features where SDXL base takes {expected} (6 size ids and the pooled text): the SDXL "
                             f"refiner (aesthetic score ids) is not supported; use the SDXL base folder")


def prompt_ids(tokenizer, prompts: Sequence[str], reserved: int = 0) -> torch.Tensor:
    """Token ids ``(B, 77)``; prompts are truncated to leave ``reserved`` trailing (padding) slots free."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_len - reserved,
                    return_tensors="pt").input_ids
    if reserved:
        pad = torch.full((ids.shape[0], reserved), tokenizer.pad_token_id, dtype=ids.dtype)
        ids = torch.cat([ids, pad], dim=1)
    return ids


def encode_prompt(tokenizer, text_encoder: nn.Module, prompts: Sequence[str], reserved: int = 0) -> torch.Tensor:
    """Text hidden states ``(B, 77, D)``; prompts are truncated to leave ``reserved`` trailing slots free."""
    device = next(text_encoder.parameters()).device
    return text_encoder(prompt_ids(tokenizer, prompts, reserved).to(device))[0]


class SDBackbone:
    """Stable Diffusion 1.x / 2.x (and SD-Turbo): one CLIP text encoder, 77 positions, AutoencoderKL, no added
    conditions."""

    family = "sd"
    pipeline_class = "StableDiffusionPipeline"  # the diffusers pipeline whose load_lora_weights reads our LoRA
    unet_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(self, components: SDComponents):
        self.components = components

    @classmethod
    def matches(cls, components: SDComponents) -> bool:
        """Whether this adapter drives ``components`` (SD 1.x/2.x: any folder; a later registration is asked
        first, so a more specific family wins)."""
        return True

    @classmethod
    def load(cls, base: Union[str, Path], dtype: torch.dtype = torch.float32) -> "SDBackbone":
        """The backbone of the folder's family (:func:`backbone_for`)."""
        return backbone_for(load_sd_components(base, dtype))

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
    def text_encoders(self) -> List[nn.Module]:
        """Every text encoder (one; two for SDXL): what is frozen, cast and moved with the UNet."""
        return self.components.text_encoders

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
        """The UNet's text context ``(B, 77, D)``."""
        return self.encode_text(prompts, reserved)[0]

    def encode_text(self, prompts: Sequence[str], reserved: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The text context and the pooled text embedding the UNet's added conditions take (``None`` here)."""
        return encode_prompt(self.tokenizer, self.text_encoder, prompts, reserved), None

    def unet_kwargs(self, latents: torch.Tensor, pooled: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Extra keyword arguments of a UNet call on ``latents`` (SD 1.x/2.x: none; SDXL: ``added_cond_kwargs``)."""
        return {}

    # ---------------------------------------------------------------------------- latents
    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                       on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Scaled posterior-mean latents of ``images`` (``(B, 3, H, W)`` in ``[0, 1]``, sides multiples of the
        VAE factor). ``tile`` (pixels) encodes overlapping tiles and blends them (Gaussian weights);
        ``on_tile(done, total)`` follows them."""
        return self.encode(images, tile, overlap, on_tile)

    def encode(self, images: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
               on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """:meth:`encode_latents` with autograd on: a trained VAE-encoder LoRA."""
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
        """Write the LoRA of ``unet`` (and ``text_encoder``) in diffusers format, configs in the metadata, with
        the family's pipeline class (its ``load_lora_weights`` reads the file)."""
        import diffusers
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
        getattr(diffusers, cls.pipeline_class).save_lora_weights(str(out_dir), weight_name=weight_name, **kwargs)

    # ----------------------------------------------------------------------------- device
    def to(self, device: Union[str, torch.device], dtype: Optional[torch.dtype] = None) -> "SDBackbone":
        for m in (*self.text_encoders, self.vae, self.unet):
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self


class SDXLBackbone(SDBackbone):
    """SDXL base: two CLIP text encoders whose penultimate hidden states are concatenated (the UNet's context),
    the second one's projected pooled output, and the size conditions ``time_ids``."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

    @classmethod
    def matches(cls, components: SDComponents) -> bool:
        return components.text_encoder_2 is not None

    @property
    def text_encoder_2(self) -> nn.Module:
        return self.components.text_encoder_2

    def encode_text(self, prompts: Sequence[str], reserved: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(B, 77, D1 + D2)`` context and ``(B, P)`` pooled embedding, as ``StableDiffusionXLPipeline`` builds
        them (``hidden_states[-2]`` of each encoder, ``text_embeds`` of the second)."""
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.components.tokenizer_2, self.text_encoder_2)):
            ids = prompt_ids(tokenizer, prompts, reserved).to(next(encoder.parameters()).device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), out[0]

    def unet_kwargs(self, latents: torch.Tensor, pooled: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """``added_cond_kwargs`` for a UNet call on ``latents``: ``pooled`` (one row per latent, or one row for all)
        and ``time_ids`` ``(original size, crop top-left, target size)`` = ``(H, W, 0, 0, H, W)`` in pixels of
        those latents, so each tile is conditioned as the whole image it is to the UNet (training: the patch)."""
        if pooled is None:
            raise ValueError("an SDXL UNet call needs the pooled text embedding: pass pooled= from encode_text")
        b, (h, w) = latents.shape[0], latents.shape[-2:]
        if pooled.shape[0] not in (1, b):
            raise ValueError(f"pooled text embeddings: expected 1 or {b} rows (one per latent), got {pooled.shape[0]}")
        f = self.vae_factor
        ids = torch.tensor([h * f, w * f, 0, 0, h * f, w * f], device=latents.device, dtype=pooled.dtype)
        return {"added_cond_kwargs": {"text_embeds": pooled.to(latents.device).expand(b, -1),
                                      "time_ids": ids.expand(b, -1)}}


def _lora_metadata(module: nn.Module) -> Dict[str, Any]:
    cfg = module.peft_config["default"].to_dict()
    targets = cfg["target_modules"]
    cfg["target_modules"] = sorted(targets) if isinstance(targets, (set, list)) else targets
    return cfg


#: SD families by name (``family``); :func:`backbone_for` asks the newest registration first
BACKBONES = Registry("SD backbone")
BACKBONES.register("sd", SDBackbone)
BACKBONES.register("sdxl", SDXLBackbone)


def backbone_for(components: SDComponents) -> SDBackbone:
    """The adapter for loaded components: the last registered family that :meth:`~SDBackbone.matches` them
    (SDXL when they hold a second text encoder, else SD 1.x/2.x)."""
    for name in reversed(BACKBONES.names()):
        cls = BACKBONES.get(name)
        if cls.matches(components):
            return cls(components)
    raise ValueError(f"no registered SD backbone ({', '.join(BACKBONES)}) drives these components")
