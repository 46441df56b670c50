"""The shipped tiny pretrained SD base: present, small, documented, and actually trained (measured here)."""

import json
from pathlib import Path

import pytest
import torch

from daclip_lora.restoration.backbone import SDBackbone
from daclip_lora.tiny.locate import EMBEDDED_SD, embedded_sd_base
from daclip_lora._utils.image_metrics import batch_psnr
from daclip_lora.tiny.recipes import HELD_OUT_IMAGES, _photographs, _random_crops


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
    from daclip_lora.tiny.locate import EMBEDDED_RESTORER, embedded_restorer

    assets = EMBEDDED_SD.parent
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size <= 25 * 2 ** 20, size
    from daclip_lora.restoration.serialization import read_restoration_config

    config = read_restoration_config(embedded_restorer())
    assert all(Path(p).exists() for p in (config.base, config.daclip_pretrained, config.daclip_adapter))
    record = json.loads((EMBEDDED_RESTORER / "recipe.json").read_text())
    assert record["recipe"] == "daclip_lora.apps.demo.train_tiny_restorer"
    assert "--restorer" in record["command"]
    assert record["demo"]["psnr_lq"] > 0 and 0 <= record["demo"]["controller_accuracy_after"] <= 1


def test_vae_reconstructs_held_out_photographs_above_28_db(backbone):
    """Measured on the shipped (fp16-stored) weights, on photographs the VAE never saw."""
    images = _random_crops(_photographs(held_out=True), 32, 64, torch.Generator().manual_seed(7))
    rec = backbone.decode_latents(backbone.encode_latents(images))
    assert batch_psnr(rec, images) >= 28.0


@torch.no_grad()
def test_unet_is_a_trained_denoiser_not_random_weights(backbone, tmp_path):
    """Held-out noise-prediction MSE at mid noise: a random UNet sits near 1 or above; the shipped one far below."""
    from daclip_lora.tiny.sd import build_tiny_sd

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


# ------------------------------------------------------------------------------ tiny DA-CLIP base
def _features(model, images):
    from daclip_lora.data.datasets import clip_batch

    return torch.nn.functional.normalize(model.clip.visual(clip_batch(images, model.image_size)).float(), dim=-1)


def _nearest_centroid_accuracy(model, train, val) -> float:
    (x, y), (xv, yv) = train, val
    f, fv = _features(model, x), _features(model, xv)
    centroids = torch.stack([f[y == k].mean(0) for k in range(int(y.max()) + 1)])
    return float(((fv @ centroids.T).argmax(1) == yv).float().mean())


def test_shipped_daclip_base_records_its_recipe_and_loads_strictly():
    from daclip_lora.clip.factory import create_model
    from daclip_lora.tiny.locate import EMBEDDED_DACLIP, embedded_daclip_base

    record = json.loads((EMBEDDED_DACLIP / "recipe.json").read_text())
    assert record["recipe"] == "daclip_lora.tiny.recipes.train_tiny_daclip" and "--daclip" in record["command"]
    assert record["data"]["training_patches_per_degradation"] == 1600 and record["steps"] == 4500
    assert set(record["held_out_probe_accuracy"]["per_class"]) == set(record["held_out_zero_shot_accuracy"]["per_class"])
    # trained without the held-out photographs, and measured on them
    assert record["data"]["held_out_images"] == list(HELD_OUT_IMAGES)
    assert 0.5 < record["new_photographs_probe_accuracy"]["overall"] <= 1.0
    model = create_model("daclip_tiny", pretrained=str(embedded_daclip_base()))
    control = dict(model.visual_control.named_parameters())
    diffs = [(p - control[n.replace("transformer.", "transformer.transformer.", 1) if n.startswith("transformer.")
                          else n]).abs().max().item() for n, p in model.clip.visual.named_parameters()]
    assert len(diffs) == 56 and max(diffs) == 0.0  # the controller starts as a copy of the trained tower
    assert max(z.abs().max().item() for z in model.visual_control.transformer.zero_modules.parameters()) == 0.0


@torch.no_grad()
def test_shipped_daclip_base_separates_degradations_on_new_patches_far_better_than_random():
    """Nearest class centroid of the vision embedding (centroids from 16 patches per degradation, accuracy on 16
    others, crops and degradation draws the recipe never used): the pretrained tower must beat the same
    architecture with random weights by a wide margin."""
    from daclip_lora.clip.factory import create_model
    from daclip_lora.tiny.locate import embedded_daclip_base
    from daclip_lora.tiny.recipes import _degraded_pool

    train, val = _degraded_pool(16, 123)[:2], _degraded_pool(16, 124)[:2]
    pretrained = create_model("daclip_tiny", pretrained=str(embedded_daclip_base())).eval()
    torch.manual_seed(0)
    random_model = create_model("daclip_tiny").eval()
    acc, acc_random = (_nearest_centroid_accuracy(m, train, val) for m in (pretrained, random_model))
    assert acc >= 0.7 and acc - acc_random >= 0.25, (acc, acc_random)


def test_daclip_recipe_is_deterministic_and_writes_a_loadable_base(tmp_path):
    from daclip_lora.clip.factory import create_model
    from daclip_lora.tiny.recipes import train_tiny_daclip

    records = [train_tiny_daclip(tmp_path / name, seed=3, steps=2, batch=4, crops=2, log_every=1) for name in "ab"]
    assert records[0]["held_out_probe_accuracy"] == records[1]["held_out_probe_accuracy"]
    a, b = (create_model("daclip_tiny", pretrained=str(tmp_path / n / "daclip_tiny.safetensors")) for n in "ab")
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff == 0.0
    torch.manual_seed(3)
    untrained = create_model("daclip_tiny")
    moved = max((p - q.half().float()).abs().max().item()
                for p, q in zip(a.clip.visual.parameters(), untrained.clip.visual.parameters()))
    assert moved > 1e-4  # the vision tower was trained ...
    text = max((p - q.half().float()).abs().max().item()
               for p, q in zip(a.clip.transformer.parameters(), untrained.clip.transformer.parameters()))
    assert text == 0.0  # ... and the text tower was not
    assert json.loads((tmp_path / "a" / "recipe.json").read_text())["steps"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--daclip", "--restorer"], "pass --restorer or --daclip, not both"),
    (["--daclip", "--daclip-steps", "0"], "steps, batch and crops must be >= 1, got steps=0"),
])
def test_make_tiny_base_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    from daclip_lora.apps.cli import main

    assert main(["make-tiny-base", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
