"""The shipped tiny pretrained SD base: present, small, documented, and actually trained (measured here)."""

import json
from pathlib import Path

import pytest
import torch

from daclip_lora.backbone import SDBackbone
from daclip_lora.tiny_bases import EMBEDDED_SD, HELD_OUT_IMAGES, _photographs, _psnr, _random_crops, embedded_sd_base


@pytest.fixture(scope="module")
def backbone():
    return SDBackbone.load(embedded_sd_base())


def test_shipped_base_is_small_and_records_its_recipe():
    size = sum(p.stat().st_size for p in EMBEDDED_SD.rglob("*") if p.is_file())
    assert size <= 25 * 2 ** 20, size
    record = json.loads((EMBEDDED_SD / "recipe.json").read_text())
    for key in ("recipe", "command", "seed", "vae_steps", "unet_steps", "versions", "vae", "unet"):
        assert key in record
    assert record["data"]["held_out_images"] == list(HELD_OUT_IMAGES)


@torch.no_grad()
def test_shipped_weights_together_stay_under_25_mb_and_the_restorer_records_its_recipe():
    from daclip_lora.tiny_bases import EMBEDDED_RESTORER, embedded_restorer

    assets = EMBEDDED_SD.parent
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size <= 25 * 2 ** 20, size
    from daclip_lora.conditioning import read_restoration_config

    config = read_restoration_config(embedded_restorer())
    assert all(Path(p).exists() for p in (config.base, config.daclip_pretrained, config.daclip_adapter))
    record = json.loads((EMBEDDED_RESTORER / "recipe.json").read_text())
    assert record["recipe"] == "daclip_lora.tiny_bases.train_tiny_restorer"
    assert "--restorer" in record["command"]
    assert record["demo"]["psnr_lq"] > 0 and 0 <= record["demo"]["controller_accuracy_after"] <= 1


def test_vae_reconstructs_held_out_photographs_above_28_db(backbone):
    """Measured on the shipped (fp16-stored) weights, on photographs the VAE never saw."""
    images = _random_crops(_photographs(held_out=True), 32, 64, torch.Generator().manual_seed(7))
    rec = backbone.decode_latents(backbone.encode_latents(images))
    assert _psnr(rec, images) >= 28.0


@torch.no_grad()
def test_unet_is_a_trained_denoiser_not_random_weights(backbone, tmp_path):
    """Held-out noise-prediction MSE at mid noise: a random UNet sits near 1 or above; the shipped one far below."""
    from daclip_lora.tiny_sd import build_tiny_sd

    images = _random_crops(_photographs(held_out=True), 16, 64, torch.Generator().manual_seed(8))
    z = backbone.encode_latents(images)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    t = torch.full((z.shape[0],), 500)
    x = backbone.scheduler.add_noise(z, noise, t)
    text = backbone.encode_prompt([""]).expand(z.shape[0], -1, -1)
    mse = (backbone.unet(x, t, encoder_hidden_states=text).sample - noise).pow(2).mean().item()
    random_sd = SDBackbone.load(build_tiny_sd(tmp_path / "random"))
    random_mse = (random_sd.unet(torch.randn(2, 4, 8, 8), torch.tensor([500, 500]),
                                 encoder_hidden_states=random_sd.encode_prompt(["", ""])).sample
                  - torch.randn(2, 4, 8, 8)).pow(2).mean().item()
    assert mse < 0.2 and random_mse > 0.8, (mse, random_mse)
