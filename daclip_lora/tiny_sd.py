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

logger = logging.getLogger(__name__)

__all__ = ["build_tiny_sd", "build_clip_tokenizer", "TINY_UNET", "TINY_VAE", "TINY_TEXT"]

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=32)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=64)
TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, bos_token_id=49406,
                 eos_token_id=49407, pad_token_id=49407)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False, steps_offset=1)


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
        unet = UNet2DConditionModel(**TINY_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    scheduler = DDPMScheduler(**{**SD_SCHEDULER, "prediction_type": prediction_type})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    logger.info("wrote a tiny Stable Diffusion folder to %s", out)
    return out
