"""A tiny Stable Diffusion pipeline folder in diffusers format, built locally with random weights.

For tests and the embedded demo on machines without a model hub: ``unet/ vae/ text_encoder/
tokenizer/ scheduler/`` plus ``model_index.json``, loadable by
``StableDiffusionPipeline.from_pretrained(folder)``. The tokenizer is CLIP's real BPE vocabulary,
taken from the copy open_clip ships, so prompts tokenize exactly as with SD 1.x. The architecture
keeps SD's structure (VAE downsampling x8, 4 latent channels, cross-attention UNet) at toy widths.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

from ..restoration.sd_configs import (FULL_SIZE_FAMILIES, SD_SCHEDULER, TEXT_ENCODER_CONFIGS, TINY_FAMILIES,
                                      UNET_CONFIGS, VAE_CONFIGS)

logger = logging.getLogger(__name__)

__all__ = ["build_tiny_sd", "build_clip_tokenizer"]


def build_clip_tokenizer(max_length: int = 77):
    """transformers' ``CLIPTokenizer`` built from open_clip's bundled BPE vocabulary (no download)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    vocab = dict(simple.encoder)
    # open_clip 3.x names the special tokens <start_of_text>/<end_of_text>; CLIP's vocab.json uses <|...|>.
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m, _ in merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                             model_max_length=max_length, pad_token="<|endoftext|>")


def build_tiny_sd(out: Union[str, Path], seed: int = 0, prediction_type: Optional[str] = None,
                  family: str = "sd1", full_size: bool = False) -> Path:
    """Write a deterministic random-weight SD folder of ``family`` to ``out`` and return its path.

    ``family`` is one of :data:`~daclip_lora.restoration.sd_configs.TINY_FAMILIES`: ``sd1`` (SD 1.x), ``sd2-v``
    (SD 2.x's UNet structure, v-prediction), ``sd-turbo`` (SD 2.x's structure, the Euler scheduler with trailing
    timesteps SD-Turbo ships) or ``sdxl`` (two text encoders, the second with a projection; pooled text and size
    conditions). Each is saved by its diffusers pipeline class, so ``from_pretrained`` of that class loads it.
    ``full_size`` builds the real architecture (SD 1.5, SD 2.1, SDXL base: gigabytes of random weights) instead
    of the toy one. ``prediction_type`` overrides the family's."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    table = FULL_SIZE_FAMILIES if full_size else TINY_FAMILIES
    if family not in table:
        raise ValueError(f"unknown SD family {family!r}; use one of {', '.join(table)}")
    unet_config, text_configs, scheduler_class, prediction, spacing = table[family]
    vae_config = dict(VAE_CONFIGS["sd" if full_size else "tiny"], **({"scaling_factor": 0.13025}
                                                                   if full_size and family == "sdxl" else {}))
    out = Path(out)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        parts = {"unet": UNet2DConditionModel(**UNET_CONFIGS[unet_config])}
        torch.manual_seed(seed + 1)
        parts["vae"] = AutoencoderKL(**vae_config)
        for i, name in enumerate(text_configs):
            torch.manual_seed(seed + 2 + i)
            model = CLIPTextModelWithProjection if i else CLIPTextModel
            parts["text_encoder_2" if i else "text_encoder"] = model(CLIPTextConfig(**TEXT_ENCODER_CONFIGS[name]))
    parts["scheduler"] = getattr(diffusers, scheduler_class).from_config(  # from_config drops unknown keys
        {**SD_SCHEDULER, "prediction_type": prediction_type or prediction, "timestep_spacing": spacing})
    parts["tokenizer"] = build_clip_tokenizer()
    if family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(**parts, tokenizer_2=build_clip_tokenizer())
    else:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    logger.info("wrote a random-weight %s%s Stable Diffusion folder to %s", family, " (full size)" * full_size, out)
    return out
