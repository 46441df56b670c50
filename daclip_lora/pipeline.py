"""Restoration inference: SD base + our LoRA/extras + DA-CLIP, with diffusers schedulers.

Images of any size are padded (reflect) to a multiple of the VAE factor (8), restored whole, and cropped
back; there is no tiling, so memory grows with the image area.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import RestorationConfig, RestorationUNet, load_restoration, read_restoration_config
from .data.datasets import clip_tensor

logger = logging.getLogger(__name__)

__all__ = ["SDComponents", "load_sd_components", "make_scheduler", "RestorationPipeline", "SCHEDULERS"]

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULERS = ("ddim", "dpm++", "euler")


@dataclass
class SDComponents:
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler: Any


def load_sd_components(base: Union[str, Path]) -> SDComponents:
    """Load a Stable Diffusion folder in diffusers format, with clear messages for what is missing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = Path(base).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"Stable Diffusion base folder {base} does not exist; set sd.base to a diffusers "
                                f"folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    missing = [s for s in SD_SUBFOLDERS if not (base / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{base} is not a Stable Diffusion folder in diffusers format: missing "
                                f"{', '.join(s + '/' for s in missing)} (convert single-file checkpoints with "
                                f"diffusers' convert_original_stable_diffusion_to_diffusers.py)")
    sd = SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(str(base / "tokenizer")),
        text_encoder=CLIPTextModel.from_pretrained(str(base / "text_encoder")),
        vae=AutoencoderKL.from_pretrained(str(base / "vae")),
        unet=UNet2DConditionModel.from_pretrained(str(base / "unet")),
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


def make_scheduler(name: str, train_scheduler: Any):
    """A sampling scheduler (``ddim``, ``dpm++``, ``euler``) from the base model's scheduler config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    classes = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}
    if name not in classes:
        from .registry import suggest

        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}.{suggest(name, SCHEDULERS)}")
    return classes[name].from_config(train_scheduler.config)


def encode_prompt(tokenizer, text_encoder, prompts, reserved: int = 0) -> torch.Tensor:
    """Text hidden states (B, 77, D); prompts are truncated to leave ``reserved`` trailing slots free."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_len - reserved,
                    return_tensors="pt").input_ids
    if reserved:
        pad = torch.full((ids.shape[0], reserved), tokenizer.pad_token_id, dtype=ids.dtype)
        ids = torch.cat([ids, pad], dim=1)
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


class RestorationPipeline:
    """LQ images in, restored images out.

    Args:
        sd: the base model's components.
        model: the :class:`RestorationUNet` (with LoRA, projector and widened ``conv_in``).
        daclip: the frozen DA-CLIP (with its controller adapter merged in, if any).
    """

    def __init__(self, sd: SDComponents, model: RestorationUNet, daclip: nn.Module):
        self.sd, self.model, self.daclip = sd, model, daclip
        self.config: RestorationConfig = model.config
        self.vae_factor = 2 ** (len(sd.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], base: Optional[str] = None,
                        daclip_pretrained: Optional[str] = None, merge_lora: bool = True,
                        device: Union[str, torch.device] = "cpu") -> "RestorationPipeline":
        """Rebuild from a saved restoration folder (``restoration.json`` says which base models)."""
        from .trainers.controller import build_daclip

        config = read_restoration_config(folder)
        sd = load_sd_components(base or config.base)
        model = RestorationUNet(sd.unet, config)
        load_restoration(model, folder, text_encoder=sd.text_encoder)
        daclip = build_daclip(config.daclip_model, daclip_pretrained or config.daclip_pretrained,
                              config.daclip_adapter)
        pipe = cls(sd, model, daclip)
        if merge_lora:
            pipe.merge_lora()
        return pipe.to(device)

    def to(self, device: Union[str, torch.device]) -> "RestorationPipeline":
        for m in (self.sd.text_encoder, self.sd.vae, self.model, self.daclip):
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def merge_lora(self) -> None:
        """Bake LoRA into the UNet (and text encoder) and fuse the widened ``conv_in``: faster, same outputs."""
        from .lora import unload_lora

        from .conditioning import LQConvIn

        unload_lora(self.model.unet, merge=True)
        if isinstance(self.model.unet.conv_in, LQConvIn):
            self.model.unet.conv_in = self.model.unet.conv_in.fused()
        if getattr(self.sd.text_encoder, "peft_config", None):
            unload_lora(self.sd.text_encoder, merge=True)

    # --------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """VAE latents (mean of the posterior, scaled) of images in ``[0, 1]``."""
        vae = self.sd.vae
        dist = vae.encode((images * 2 - 1).to(self.device, vae.dtype)).latent_dist
        return dist.mean * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.sd.vae
        return ((vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def daclip_embeddings(self, images: torch.Tensor):
        clip_in = torch.stack([clip_tensor(img.float().cpu()) for img in images]).to(self.device)
        p = next(self.daclip.parameters())
        return self.daclip.encode_image(clip_in.to(p.dtype), control=True)

    @torch.no_grad()
    def text_hidden(self, prompt: str, batch: int) -> torch.Tensor:
        hidden = encode_prompt(self.sd.tokenizer, self.sd.text_encoder, [prompt], self.config.context_slots)
        return hidden.expand(batch, -1, -1)

    # ---------------------------------------------------------------------------- sample
    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, steps: int = 50, scheduler: str = "ddim", guidance_scale: float = 1.0,
                 strength: float = 1.0, seed: int = 0, prompt: Optional[str] = None) -> torch.Tensor:
        """Restore ``lq`` (``(B, 3, H, W)`` in ``[0, 1]``, any size); returns the same shape in ``[0, 1]``.

        Args:
            steps: sampling steps. scheduler: ``ddim``, ``dpm++`` or ``euler``.
            guidance_scale: > 1 enables classifier-free guidance against "no DA-CLIP tokens, empty prompt".
            strength: < 1 starts from the LQ latent noised to that level (fewer effective steps).
            seed: the sampling noise seed.
        """
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        b, _, h, w = lq.shape
        f = self.vae_factor
        ph, pw = (-h) % f, (-w) % f
        x = F.pad(lq, (0, pw, 0, ph), mode="reflect") if (ph or pw) else lq
        x = x.to(self.device)
        z_lq = self.encode_latents(x)
        image_emb, degra_emb = self.daclip_embeddings(x)
        text = self.text_hidden(self.config.prompt if prompt is None else prompt, b)
        cond = self.model.context(text, image_emb, degra_emb)
        uncond = self.model.context(self.text_hidden("", b), image_emb, degra_emb, keep_daclip=torch.zeros(b))
        sched = make_scheduler(scheduler, self.sd.scheduler)
        sched.set_timesteps(steps, device=self.device)
        timesteps = sched.timesteps
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(z_lq.shape, generator=generator).to(self.device, z_lq.dtype)
        if strength < 1:
            start = steps - max(1, int(round(steps * strength)))
            timesteps = timesteps[start * sched.order:]
            latents = sched.add_noise(z_lq, noise, timesteps[:1].repeat(b))
        else:
            latents = noise * sched.init_noise_sigma
        unet = self.model.unet
        for t in timesteps:
            model_in = sched.scale_model_input(latents, t)
            if self.config.lq_latent:
                model_in = torch.cat([model_in, z_lq], dim=1)
            tt = t.expand(b) if t.ndim == 0 else t
            if guidance_scale > 1:
                both = unet(torch.cat([model_in, model_in]), torch.cat([tt, tt]),
                            encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
                u, c = both.chunk(2)
                pred = u + guidance_scale * (c - u)
            else:
                pred = unet(model_in, tt, encoder_hidden_states=cond, return_dict=False)[0]
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        out = self.decode_latents(latents)
        return out[:, :, :h, :w].float().cpu()
