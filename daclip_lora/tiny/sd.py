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
from typing import Union

import torch

from ..restoration.sd_configs import SD_SCHEDULER, TEXT_ENCODER_CONFIGS, UNET_CONFIGS, VAE_CONFIGS

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


def build_tiny_sd(out: Union[str, Path], seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a deterministic tiny SD folder to ``out`` and return its path."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIGS["tiny"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**VAE_CONFIGS["tiny"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIGS["tiny"]))
    scheduler = DDPMScheduler(**{**SD_SCHEDULER, "prediction_type": prediction_type})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    logger.info("wrote a tiny Stable Diffusion folder to %s", out)
    return out
