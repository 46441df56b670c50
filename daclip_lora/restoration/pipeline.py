"""Restoration inference: SD base + our LoRA/extras + DA-CLIP, with diffusers schedulers.

Images of any size are padded (reflect) to a multiple of the VAE factor and restored; images larger
than the tile size are restored with tiled latent diffusion (Gaussian-blended UNet predictions at every
step) and a tiled VAE (:mod:`daclip_lora.restoration.tiling`), so memory is bounded by the tile size. Every tensor is
created on the pipeline's device; the UNet and DA-CLIP run under autocast when ``precision`` is bf16/fp16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.datasets import clip_batch, degradation_embeddings, view_side
from .backbone import SDBackbone, SDComponents, backbone_for, encode_prompt, load_sd_components
from .color_fix import COLOR_FIXES, apply_color_fix
from .diffusion import one_step
from .conditioning import Conditions
from .model import RestorationConfig, RestorationUNet
from .progress import TileProgress
from .schedulers import SCHEDULER_ALIASES, SCHEDULERS, make_scheduler, scheduler_name
from .serialization import load_restoration, read_restoration_config
from .tiling import tiled_map
from .zero_shot import DegradationReader

logger = logging.getLogger(__name__)

__all__ = ["RestorationPipeline", "SDComponents", "load_sd_components", "make_scheduler", "encode_prompt",
           "SCHEDULERS", "SCHEDULER_ALIASES", "PRECISIONS"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RestorationPipeline:
    """LQ images in, restored images out.

    Args:
        sd: the base model (a :class:`~daclip_lora.restoration.backbone.SDBackbone` or loaded components).
        model: the :class:`RestorationUNet` (with its LoRA and conditioning paths).
        daclip: the frozen DA-CLIP (with its controller adapter merged in, if any).
        precision: ``fp32``, ``bf16`` or ``fp16``: autocast dtype of the UNet and DA-CLIP (the VAE stays fp32).
    """

    def __init__(self, sd: Union[SDBackbone, SDComponents], model: RestorationUNet, daclip: nn.Module,
                 precision: str = "fp32"):
        self.backbone = sd if isinstance(sd, SDBackbone) else backbone_for(sd)
        self.model, self.daclip = model, daclip
        self.config: RestorationConfig = model.config
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        #: DA-CLIP's zero-shot degradation words (color_fix auto, folder reports, a user's degradation word)
        self.degradations = DegradationReader(daclip, self.config.daclip_model)
        self._prompt_cache: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.lora_scale = 1.0  # the UNet LoRA's strength (set_lora_scale); baked in once merged
        # decode_pair: one decoder call for the restored and the LQ latents; off by default because on a CPU the
        # batched call measured slower than two (docs/benchmarks.md#pipeline-stages); GPUs not measured
        self.batch_decodes = False
        self.compiled = False  # compile(): torch.compile of the UNet and the VAE decoder

    @property
    def sd(self) -> SDComponents:
        return self.backbone.components

    @property
    def vae_factor(self) -> int:
        return self.backbone.vae_factor

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], base: Optional[str] = None,
                        daclip_pretrained: Optional[str] = None, merge_lora: bool = True,
                        device: Optional[Union[str, torch.device]] = None, precision: str = "fp32",
                        lora_scale: float = 1.0, daclip_adapter: Optional[str] = None) -> "RestorationPipeline":
        """Rebuild from a saved restoration folder (``restoration.json`` says which base models).

        Args:
            folder: what a restoration run wrote (``experiments/<name>/models/restoration``), the folder above
                it or a ``daclip-lora demo`` output folder (see
                :func:`~daclip_lora.restoration.locate.find_restoration_folder`).
            base, daclip_pretrained: override the base SD folder / DA-CLIP checkpoint recorded in the folder.
            merge_lora: bake LoRA into the UNet and fuse the widened ``conv_in`` (faster, same outputs).
            device: where to run (``None``: CUDA if available, else the CPU).
            precision: autocast dtype (``fp32``, ``bf16``, ``fp16``).
            lora_scale: the UNet LoRA's strength (:meth:`set_lora_scale`), applied before merging.
            daclip_adapter: override the controller LoRA folder recorded in the folder.
        """
        from ..clip.factory import load_daclip
        from .locate import find_restoration_folder

        folder = find_restoration_folder(folder)
        config = read_restoration_config(folder)
        backbone = SDBackbone.load(base or config.base)
        model = RestorationUNet(backbone.unet, config, vae_encoder=backbone.vae.encoder)
        load_restoration(model, folder, text_encoder=backbone.text_encoder)
        daclip = load_daclip(config.daclip_model, daclip_pretrained or config.daclip_pretrained,
                             daclip_adapter or config.daclip_adapter)
        pipe = cls(backbone, model, daclip.eval().requires_grad_(False), precision=precision)
        pipe.set_lora_scale(lora_scale)
        if merge_lora:
            pipe.merge_lora()
        return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def to(self, device: Union[str, torch.device]) -> "RestorationPipeline":
        self._prompt_cache.clear()
        self.degradations = DegradationReader(self.daclip, self.config.daclip_model)  # words on the new device
        for m in (*self.backbone.text_encoders, self.backbone.vae, self.model, self.daclip):
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def merge_lora(self) -> None:
        """Bake LoRA into the UNet (and the VAE and text encoders) and fold the paths that can be folded (the
        widened ``conv_in``): faster, same outputs.

        A LoRA that a path changes per image (the degradation-modulated LoRA) refuses to merge: it stays a peft
        layer; the rest is still merged.
        """
        from .._utils.lora import unload_lora

        self._prompt_cache.clear()
        if self.model.lora_mergeable:
            unload_lora(self.model.unet, merge=True)
        else:
            logger.info("the UNet's LoRA is modulated per image (modulated_lora): kept unmerged")
        self.model.merge_paths()
        if self.model.lq_encoder is not None:  # the VAE's encoder, which encode_latents uses
            unload_lora(self.model.lq_encoder, merge=True)
        if getattr(self.backbone.text_encoder, "peft_config", None):
            unload_lora(self.backbone.text_encoder, merge=True)

    def set_lora_scale(self, scale: float) -> None:
        """The fidelity / perception control: the UNet LoRA at ``scale`` times its trained strength.

        0 is the base UNet (a one-step model then returns about its input: fidelity), 1 the trained model
        (default), above 1 extrapolates. A merged LoRA has its scale baked in: load with ``merge_lora=False``
        (or pass ``lora_scale`` to :meth:`from_pretrained`) to change it.
        """
        from .._utils.lora import set_lora_scale

        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 <= scale <= 4):
            raise ValueError(f"lora_scale must be a number in [0, 4] (1 = as trained), got {scale!r}")
        if float(scale) == self.lora_scale:
            return
        if self.model.lq_encoder is not None:  # the VAE-encoder LoRA too: 0 is the base model
            set_lora_scale(self.model.lq_encoder, float(scale))
        if set_lora_scale(self.model.unet, float(scale)) == 0:
            raise ValueError(f"the UNet's LoRA is merged at scale {self.lora_scale:g}, so lora_scale {scale:g} cannot "
                             "be applied: load with merge_lora=False, or pass lora_scale to from_pretrained")
        self._prompt_cache.clear()
        self.lora_scale = float(scale)

    def compile(self, **options: Any) -> "RestorationPipeline":
        """Opt-in ``torch.compile`` of the UNet and the VAE decoder, both in ``channels_last``, in place.

        The first call at each new input shape compiles (seconds to minutes); later calls reuse it. Merge the
        LoRA first (:meth:`merge_lora`): a LoRA-scale change afterwards recompiles. ``options`` go to
        ``torch.compile`` (e.g. ``mode="max-autotune"`` on a GPU).
        """
        for module in (self.model.unet, self.backbone.vae.decoder):
            module.to(memory_format=torch.channels_last)
            module.compile(**options)
        self.compiled = True
        return self

    # --------------------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the pipeline's ``precision`` on its device (a no-op for fp32 and the meta device)."""
        if self.precision == "fp32" or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                       on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """VAE latents (posterior mean, scaled) of images in ``[0, 1]``."""
        return self.backbone.encode_latents(images, tile, overlap, on_tile)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                       on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        return self.backbone.decode_latents(latents, tile, overlap, on_tile)

    @torch.no_grad()
    def decode_pair(self, latents: torch.Tensor, z_lq: torch.Tensor, tile: Optional[int] = None, overlap: int = 0,
                    on_tile: Optional[Callable[[int, int], None]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The restored and the LQ latents decoded (what the fusion head blends): one decoder call on both when
        untiled and :attr:`batch_decodes` is set (fewer, larger kernels; the same images: the decoder's norms are
        per image), else two calls."""
        if tile is None and self.batch_decodes:
            both = self.decode_latents(torch.cat([latents, z_lq.to(latents.dtype)]), tile, overlap, on_tile)
            return both[:latents.shape[0]], both[latents.shape[0]:]
        return (self.decode_latents(latents, tile, overlap, on_tile),
                self.decode_latents(z_lq, tile, overlap, on_tile))

    @torch.no_grad()
    def daclip_embeddings(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """DA-CLIP ``(content, degradation)`` embeddings of images in ``[0, 1]`` (on the device): the content one of
        the whole image, the degradation one from :func:`degradation_embeddings` (native-resolution crops of
        ``config.daclip_crop`` pixels when the image is larger)."""
        p = next(self.daclip.parameters())
        images = images.to(p.device)
        content, degradation = self.daclip.encode_image(clip_batch(images, self.daclip.image_size).to(p.dtype),
                                                        control=True)
        if min(images.shape[-2:]) > view_side(self.daclip.image_size, self.config.daclip_crop):
            degradation = degradation_embeddings(self.daclip, images, self.config.daclip_crop)
        return content, degradation

    @torch.no_grad()
    def text_hidden(self, prompt: str, batch: int) -> torch.Tensor:
        """The text encoder's hidden states of ``prompt``, ``(batch, 77, D)``; cached per prompt (the text encoder
        is frozen at inference; :meth:`to` and :meth:`merge_lora` clear the cache)."""
        return self._encoded_prompt(prompt)[0].expand(batch, -1, -1)

    @torch.no_grad()
    def text_pooled(self, prompt: str, batch: int) -> Optional[torch.Tensor]:
        """The pooled text embedding of ``prompt`` the UNet's added conditions take, ``(batch, P)`` (SDXL), or
        ``None`` (SD 1.x/2.x)."""
        pooled = self._encoded_prompt(prompt)[1]
        return None if pooled is None else pooled.expand(batch, -1)

    def _encoded_prompt(self, prompt: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        encoded = self._prompt_cache.get(prompt)
        if encoded is None:
            encoded = self.backbone.encode_text([prompt], self.config.context_slots)
            if len(self._prompt_cache) >= 16:
                self._prompt_cache.clear()
            self._prompt_cache[prompt] = encoded
        return encoded

    #: smallest automatic tile side (pixels): a small base (the tiny ones: 64 px) is fully convolutional with
    #: attention at its lowest resolution only, so it restores 512 px at once; 64 px tiles would cut a photo
    #: into hundreds of pieces
    AUTO_TILE_MIN = 512

    def tile_for(self, height: int, width: int, tile_size: Optional[int]) -> Optional[int]:
        """The pixel tile side for an image (``None``: restore whole). ``tile_size`` ``None`` is automatic:
        tiles of the base's native resolution (at least :attr:`AUTO_TILE_MIN`) for images larger than that;
        ``0`` never tiles."""
        if tile_size is not None and tile_size < 0:
            raise ValueError(f"tile_size must be >= 0 (0 disables tiling), got {tile_size}")
        tile = max(self.backbone.native_resolution, self.AUTO_TILE_MIN) if tile_size is None else int(tile_size)
        if tile == 0 or max(height, width) <= tile:
            return None
        f, smallest = self.vae_factor, max(2 * self.vae_factor, self.min_side)
        if tile < smallest:
            raise ValueError(f"tile_size {tile} is too small: use at least {smallest} pixels (twice the VAE factor, "
                             f"and one latent pixel at the UNet's deepest level)")
        return tile // f * f

    # ---------------------------------------------------------------------------- sample
    # inference mode, not no_grad: no version counters or view tracking on the call's tensors. Its outputs are
    # inference tensors (read them freely; clone one before an in-place edit or a graph outside inference mode).
    # The fusion head's fit does not go through this call (it reads the decodes under no_grad)
    @torch.inference_mode()
    def __call__(self, lq: torch.Tensor, steps: int = 50, scheduler: str = "ddim", guidance_scale: float = 1.0,
                 strength: float = 1.0, seed: int = 0, prompt: Optional[str] = None,
                 tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
                 callback: Optional[Callable[[int, int], None]] = None, progress: bool = False,
                 embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, fusion: bool = True,
                 color_fix: str = "none") -> torch.Tensor:
        """Restore ``lq`` (``(B, 3, H, W)`` in ``[0, 1]``, any size); returns the same shape in ``[0, 1]``,
        as fp32 on ``lq``'s device.

        A ``one_step`` model (``config.objective``) restores in one UNet call: ``steps``, ``scheduler``,
        ``strength`` and ``seed`` do not apply to it. A model with a fusion head blends its decoded output with
        the LQ image (see :class:`~daclip_lora.restoration.fusion.FusionHead`).

        Args:
            steps: sampling steps. scheduler: ``ddim``, ``dpm++`` or ``euler`` (or an alias such as ``dpmpp_2m``).
            guidance_scale: > 1 enables classifier-free guidance against "empty prompt, every DA-CLIP path
                off" (the LQ latent is kept).
            strength: < 1 starts from the LQ latent noised to that level (fewer effective steps).
            seed: the sampling noise seed: each image gets the same noise on any device, whatever it is batched
                with.
            prompt: overrides the prompt the model was trained with.
            tile_size, tile_overlap: tiled restoration in pixels (``None``: automatic above the base's native
                size, overlap a quarter of the tile; ``0``: never tile).
            callback: called as ``callback(step, total)`` after every denoising step.
            progress: show a tqdm bar over the denoising steps.
            embeddings: DA-CLIP ``(content, degradation)`` embeddings to condition on instead of the LQ's own (each
                ``(B, D)``; e.g. another image's, to measure how much the model uses them).
            fusion: ``False`` returns the decoded UNet output without the fusion head's blend (the UNet alone).
            color_fix: ``none``, ``wavelet``, ``adain`` or ``auto`` (:mod:`~daclip_lora.restoration.color_fix`;
                ``auto`` skips the fix where DA-CLIP reads a low-frequency degradation).
        """
        # 1. check the inputs, pad to the VAE factor, choose the tiling
        self.check_inputs(lq, steps, strength, scheduler, color_fix)
        h, w = lq.shape[2:]
        x = self.prepare_image(lq)
        tile, overlap = self.prepare_tiling(x, tile_size, tile_overlap)
        # 2. the LQ latent and the conditions: DA-CLIP embeddings, prompt, DA-CLIP tokens (and the unconditional
        #    context for classifier-free guidance)
        tiles = TileProgress(progress and tile is not None)
        z_lq = self.encode_latents(x, tile, overlap, tiles.stage())
        image_emb, degra_emb, cond, uncond = self.encode_conditions(x, prompt, guidance_scale, embeddings)
        # 3. the UNet call of every step (guided, tiled)
        one_step = self.config.objective == "one_step"
        run = self._predictor(x.shape[0], z_lq.shape[1], cond, uncond, guidance_scale, tile, overlap,
                              tiles.stage(repeats=1 if one_step else self.sampling_steps(steps, strength)))
        # 4. one UNet call (one_step objective) or the sampling loop
        if one_step:
            latents = self._one_step(z_lq, run, callback)
        else:
            latents = self._sample(z_lq, run, scheduler, steps, strength, seed, callback, progress and tile is None)
        # 5. decode, then the fusion head's blend with the LQ image when the model has a fitted one
        blend = fusion and self.model.fusion is not None and self.model.fusion.fitted
        second = blend and self.model.fusion.uses_decoded_lq  # the head reads D(z_LQ): a second decode
        decode_tiles = tiles.stage(repeats=2 if second else 1)
        if second:
            out, decoded_lq = self.decode_pair(latents, z_lq, tile, overlap, decode_tiles)
        else:
            out, decoded_lq = self.decode_latents(latents, tile, overlap, decode_tiles), None
        if blend:
            out = self.model.fusion(x, out, decoded_lq, degra_emb.float()).clamp(0, 1)
        if color_fix != "none":
            words = self.degradations.predict(degra_emb) if color_fix == "auto" else None
            out = apply_color_fix(out, x, color_fix, words)
        tiles.close()
        return out[:, :, :h, :w].to(lq.device, torch.float32)

    @staticmethod
    def sampling_steps(steps: int, strength: float) -> int:
        """UNet calls of the sampling loop for ``steps`` and ``strength`` (first-order schedulers)."""
        return steps if strength >= 1 else max(1, int(round(steps * strength)))

    @torch.no_grad()
    def conditioning_embeddings(self, lq: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """DA-CLIP's ``(content, degradation)`` embeddings of ``lq`` exactly as :meth:`__call__` computes them
        (on the padded image): pass them back as ``embeddings=``."""
        x = self.prepare_image(lq)
        with self.autocast():
            return self.daclip_embeddings(x)

    @staticmethod
    def check_inputs(lq: torch.Tensor, steps: int, strength: float, scheduler: str = "ddim",
                     color_fix: str = "none") -> None:
        """Raise ``ValueError`` naming the bad argument (an unknown scheduler too, even where none is used)."""
        scheduler_name(scheduler)
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"unknown colour fix {color_fix!r}; use one of {', '.join(COLOR_FIXES)}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"lq must be (B, 3, H, W) in [0, 1], got shape {tuple(lq.shape)}")

    #: sampling arguments a ``one_step`` model does not use (it makes one UNet call from the LQ latent)
    MULTI_STEP_ARGUMENTS = ("steps", "scheduler", "strength", "seed")

    def ignored_arguments(self, given: Iterable[str]) -> List[str]:
        """Those of the ``given`` sampling argument names that this model ignores (for a warning)."""
        if self.config.objective != "one_step":
            return []
        return [name for name in given if name in self.MULTI_STEP_ARGUMENTS]

    @property
    def min_side(self) -> int:
        """The smallest image side the model takes: one latent pixel at the UNet's deepest level (smaller images
        would leave its GroupNorms a single value per group)."""
        levels = len(self.backbone.unet.config.down_block_types)
        return self.vae_factor * 2 ** (levels - 1)

    def prepare_image(self, lq: torch.Tensor) -> torch.Tensor:
        """``lq`` in fp32 on the pipeline's device, padded (reflect, or replicate for tiny images) to a multiple of
        the VAE factor and to at least :attr:`min_side` (the output is cropped back)."""
        f, (h, w) = self.vae_factor, lq.shape[2:]
        m = self.min_side
        ph, pw = max((-h) % f, m - h), max((-w) % f, m - w)
        x = lq.to(self.device, torch.float32)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return x

    def prepare_tiling(self, x: torch.Tensor, tile_size: Optional[int], tile_overlap: Optional[int]
                       ) -> Tuple[Optional[int], int]:
        """Tile and overlap in pixels (``(None, 0)``: no tiling)."""
        tile = self.tile_for(x.shape[2], x.shape[3], tile_size)
        overlap = (tile // 4 if tile_overlap is None else int(tile_overlap)) if tile else 0
        if tile and not 0 <= overlap < tile:
            raise ValueError(f"tile_overlap must be in [0, tile_size {tile}), got {overlap}")
        return tile, overlap

    def encode_conditions(self, x: torch.Tensor, prompt: Optional[str], guidance_scale: float,
                          embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """DA-CLIP's content and degradation embeddings (``embeddings`` when given), then the conditional and
        (for guidance > 1; else ``None``) the unconditional (empty prompt, no DA-CLIP) UNet inputs, each a
        ``(text hidden states, Conditions, pooled text)`` triple (pooled ``None`` outside SDXL; the LQ latent is
        added per call, tile by tile)."""
        b = x.shape[0]
        if embeddings is not None and any(e.shape[0] != b for e in embeddings):
            raise ValueError(f"embeddings must hold one (content, degradation) pair per image: {b} images, got "
                             f"{[tuple(e.shape) for e in embeddings]}")
        prompt = self.config.prompt if prompt is None else prompt
        with self.autocast():
            image_emb, degra_emb = self.daclip_embeddings(x) if embeddings is None else \
                (e.to(self.device) for e in embeddings)
            conditions = Conditions(image=image_emb, degradation=degra_emb)
            cond = (self.text_hidden(prompt, b), conditions, self.text_pooled(prompt, b))
            if guidance_scale <= 1:
                return image_emb, degra_emb, cond, None
            off = dataclasses.replace(conditions, keep_daclip=torch.zeros(b, device=x.device))
            return image_emb, degra_emb, cond, (self.text_hidden("", b), off, self.text_pooled("", b))

    def _predictor(self, b: int, c: int, cond: Tuple[torch.Tensor, Conditions, Optional[torch.Tensor]],
                   uncond: Optional[Tuple[torch.Tensor, Conditions, Optional[torch.Tensor]]], guidance_scale: float,
                   tile: Optional[int], overlap: int, on_tile: Optional[Callable[[int, int], None]] = None
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``run(model_in, t)``: the (guided, tiled) UNet prediction for ``[latents, LQ latent]`` at ``t``;
        ``cond`` and ``uncond`` are :meth:`encode_conditions`' triples (``uncond`` ``None`` without guidance). Every
        input is repeated for the ``k`` tiles of the ``b`` images in a call (twice that under guidance), and the
        backbone's extra UNet arguments are built for each call's own latents."""
        device, f = self.device, self.vae_factor
        latent_tile, latent_overlap = (tile // f, overlap // f) if tile else (0, 0)
        branches = [cond] if uncond is None else [uncond, cond]

        def predict(model_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            k = model_in.shape[0] // b  # tile positions stacked in this call
            noisy = model_in[:, :c]
            lq = model_in[:, c:]  # every path may read it; the lq_latent path feeds it to conv_in
            n = len(branches)
            conditions = Conditions.cat([dataclasses.replace(cnd.repeat(k), lq_latent=lq) for _, cnd, _ in branches])
            pooled = [p for _, _, p in branches]
            both_noisy = noisy if n == 1 else noisy.repeat(n, 1, 1, 1)
            pred = self.model.denoise(both_noisy, t.to(device).expand(both_noisy.shape[0]),
                                      torch.cat([h.repeat(k, 1, 1) for h, _, _ in branches]), conditions,
                                      **self.backbone.unet_kwargs(both_noisy, None if pooled[0] is None else
                                                                  torch.cat([p.repeat(k, 1) for p in pooled])))
            if n == 1:
                return pred
            u, cnd = pred.float().chunk(2)
            return u + guidance_scale * (cnd - u)

        def run(model_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                if latent_tile:
                    return tiled_map(lambda m: predict(m, t), model_in, latent_tile, latent_overlap, on_tile=on_tile)
                return predict(model_in, t)

        return run

    def _one_step(self, z_lq: torch.Tensor, run: Callable, callback: Optional[Callable[[int, int], None]]
                  ) -> torch.Tensor:
        """The one-step objective: the LQ latent read as x_t at ``one_step_t``, mapped to x0 in one UNet call."""
        def predict(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            model_in = torch.cat([noisy, z_lq.to(noisy.dtype)], dim=1)  # tiled with the latents
            return run(model_in, timesteps[0])  # one timestep for every tile of every image

        latents = one_step(self.backbone.scheduler, z_lq, self.config.one_step_t, self.config.one_step_input, predict)
        if callback is not None:
            callback(1, 1)
        return latents

    def _sample(self, z_lq: torch.Tensor, run: Callable, scheduler: str, steps: int, strength: float, seed: int,
                callback: Optional[Callable[[int, int], None]], progress: bool) -> torch.Tensor:
        """The diffusion objective's sampling loop: from noise (or the noised LQ latent when strength < 1)."""
        device, b = z_lq.device, z_lq.shape[0]
        sched = make_scheduler(scheduler, self.backbone.scheduler)
        sched.set_timesteps(steps)  # timesteps stay on the CPU: schedulers index their tables with them
        timesteps = sched.timesteps
        # every image gets the noise of `seed`, as if restored alone: results do not depend on the batching
        noise = torch.randn(z_lq.shape[1:], generator=torch.Generator().manual_seed(seed)).to(device)
        noise = noise.expand(b, *noise.shape).contiguous()
        if strength < 1:
            start = steps - max(1, int(round(steps * strength)))
            timesteps = timesteps[start * sched.order:]
            latents = sched.add_noise(z_lq.float(), noise, timesteps[:1].repeat(b))
        else:
            latents = noise * sched.init_noise_sigma
        bar = tqdm(total=len(timesteps), desc="denoise", unit="step", leave=False, disable=not progress)
        for i, t in enumerate(timesteps):
            model_in = sched.scale_model_input(latents, t)
            model_in = torch.cat([model_in, z_lq.to(model_in.dtype)], dim=1)  # tiled with the latents
            pred = run(model_in, t)
            latents = sched.step(pred.float(), t, latents, return_dict=False)[0]
            bar.update(1)
            if callback is not None:
                callback(i + 1, len(timesteps))
        bar.close()
        return latents

    # ----------------------------------------------------------------------------- folders
    def restore_folder(self, input: Union[str, Path], output: Union[str, Path], **options: Any) -> Any:
        """Restore every image of a folder tree (or one image file) into ``output``:
        :func:`daclip_lora.restoration.folders.restore_folder` with this pipeline."""
        from .folders import restore_folder

        return restore_folder(self, input, output, **options)

