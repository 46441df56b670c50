"""The time-embedding conditioning path (``sd.conditioning.time_embedding``): DA-CLIP's degradation embedding
added to the UNet's time embedding, which reaches every ResBlock."""

import json

import pytest
import torch

from daclip_lora.restoration.model import DegradationTimeEmbedding
from daclip_lora.restoration.pipeline import RestorationPipeline, load_sd_components
from daclip_lora.restoration.serialization import load_restoration, read_restoration_config, save_restoration
from daclip_lora.training.engine import Engine
from daclip_lora.training.tasks.restoration import RestorationTrainer

from test_restoration import _inputs, _model, _opt, _perturb


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _no_other_conditioning():
    """Only the time path can carry the degradation embedding: no DA-CLIP tokens, no LQ latent."""
    return dict(image_context=False, degra_context=False, lq_latent=False)


@torch.no_grad()
def test_step0_is_exactly_the_model_without_the_path(assets):
    _, plain = _model(assets, seed=0)
    _, timed = _model(assets, seed=0, time_embedding=True)
    x = _inputs()
    assert isinstance(timed.unet.class_embedding, DegradationTimeEmbedding)
    assert (timed(**x) - plain(**x)).abs().max().item() == 0.0


def test_time_embedding_weights_are_trained_in_full(assets):
    _, model = _model(assets, time_embedding=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n, _ in model.unet.class_embedding.named_parameters()}
    assert {f"unet.class_embedding.{n}" for n in head} <= trainable
    assert len(head) == 6  # norm, linear_1, linear_2: weight and bias each


def _fit(model, steps=40, seed=0):
    """Regress two fixed targets from two degradation embeddings; nothing else tells the samples apart."""
    g = torch.Generator().manual_seed(seed)
    x = _inputs(seed)
    x["degra_emb"] = torch.randn(2, 64, generator=g)
    target = torch.stack([torch.full((4, 4, 4), 1.0), torch.full((4, 4, 4), -1.0)])
    x["noisy"] = x["noisy"][:1].expand(2, -1, -1, -1).contiguous()  # the same input for both samples
    x["timesteps"] = torch.tensor([10, 10])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = (model(**x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


@pytest.mark.parametrize("time_embedding, uses_it", [(True, True), (False, False)])
def test_the_unet_uses_the_degradation_embedding_only_through_the_path(assets, time_embedding, uses_it):
    """Swapping the two samples' embeddings changes the prediction when (and only when) the path is on (the
    targets differ by 2; this tiny UNet, frozen but for attention LoRA and the path, moves about 0.3 in 40 steps)."""
    _, model = _model(assets, time_embedding=time_embedding, **_no_other_conditioning())
    x = _fit(model)
    with torch.no_grad():
        out = model(**x)
        swapped = model(**{**x, "degra_emb": x["degra_emb"].flip(0)})
    change = (out - swapped).abs().mean().item()
    if uses_it:
        assert change > 0.1, f"the UNet ignores the degradation embedding (mean change {change:.4f})"
    else:
        assert change == 0.0


@torch.no_grad()
def test_saved_and_loaded_with_the_folder(assets, tmp_path):
    _, model = _model(assets, time_embedding=True)
    _perturb(model, seed=2)
    out = save_restoration(model, tmp_path / "restoration")
    assert json.loads((out / "restoration.json").read_text())["time_embedding"] is True
    fresh_sd = load_sd_components(assets / "tiny_sd")
    from daclip_lora.restoration.model import RestorationUNet

    fresh = RestorationUNet(fresh_sd.unet, read_restoration_config(out))
    load_restoration(fresh, out)
    x = _inputs(1)
    assert (fresh(**x) - model(**x)).abs().max().item() < 1e-6


def test_denoise_without_time_labels_is_a_clear_error(assets):
    _, model = _model(assets, time_embedding=True)
    x = _inputs()
    ctx = model.context(x["text_hidden"], x["image_emb"], x["degra_emb"])
    with pytest.raises(ValueError, match="pass time_labels"):
        model.denoise(x["noisy"], x["timesteps"], ctx, x["lq_latents"])


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_trained_from_options_and_restored_by_the_pipeline(assets, tmp_path, guidance):
    opt = _opt(tmp_path, assets, "sd.conditioning.time_embedding=true")
    Engine(opt, RestorationTrainer(opt)).fit()
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    assert read_restoration_config(folder).time_embedding is True
    pipe = RestorationPipeline.from_pretrained(folder, device="cpu")
    lq = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    out = pipe(lq, steps=2, guidance_scale=guidance, tile_size=16, seed=0)
    assert tuple(out.shape) == (1, 3, 40, 24) and torch.isfinite(out).all()
