"""The one-step objective and the fusion head: maths, identity at init, fitting, save/load, pipeline, options."""

import json
import math

import pytest
import torch

from daclip_lora.restoration.conditioning import conditioning_paths
from daclip_lora.restoration.diffusion import diffusion_target, predicted_x0
from daclip_lora.restoration.fusion import FusionHead, _log_mse, fit_fusion_head, fusion_fit_data
from daclip_lora.restoration.lora import add_unet_lora
from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
from daclip_lora.restoration.serialization import (FORMAT_VERSION, load_restoration, read_restoration_config,
                                                   save_restoration)
from daclip_lora.training.engine import Engine
from daclip_lora.clip.factory import load_daclip
from daclip_lora.restoration.pipeline import RestorationPipeline, load_sd_components
from daclip_lora.training.tasks.restoration import RestorationTrainer

from test_restoration import DEGS, _opt, _perturb


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _psnr(a, b):
    return -10 * math.log10(float((a - b).pow(2).mean()))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_the_training_target(prediction_type):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 50, 999])
    noisy = sched.add_noise(x0, noise, t)
    recovered = predicted_x0(sched, diffusion_target(sched, x0, noise, t), noisy, t)
    assert (recovered - x0).abs().max().item() < 1e-3


@pytest.mark.parametrize("b,h,w", [(1, 16, 16), (3, 24, 40)])
def test_fusion_head_starts_as_the_identity(b, h, w):
    head = FusionHead(embed_dim=64)
    g = torch.Generator().manual_seed(0)
    lq, dec, dec_lq = (torch.rand(b, 3, h, w, generator=g) for _ in range(3))
    out = head(lq, dec, dec_lq, torch.randn(b, 64, generator=g))
    assert out.shape == lq.shape and (out - lq).abs().max().item() == 0.0
    assert head.fitted is False


def test_fit_fusion_head_learns_a_degradation_dependent_correction():
    """Two 'degradations' told apart only by the degradation embedding: one darkened (GT = 2 LQ), one whose
    decoded restored latent is the GT. The fitted head must undo both, far above the LQ."""
    g = torch.Generator().manual_seed(0)
    n = 64
    gt = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    dark = torch.arange(n) % 2 == 0
    lq = torch.where(dark.view(-1, 1, 1, 1), gt / 2, gt + 0.1 * torch.randn(n, 3, 16, 16, generator=g))
    decoded = torch.where(dark.view(-1, 1, 1, 1), lq, gt)
    degra = torch.zeros(n, 8)
    degra[dark, 0], degra[~dark, 1] = 1.0, 1.0
    head = FusionHead(embed_dim=8)
    report = fit_fusion_head(head, fusion_fit_data(head, lq, decoded, lq.clone(), gt, degra),
                             steps=300, lr=1e-2)
    assert head.fitted is True and not any(p.requires_grad for p in head.parameters())
    assert report["psnr_fused"] > report["psnr_lq"] + 10, report


def test_fusion_head_reads_how_far_the_decode_moved():
    """Same embeddings for every image; half the decodes are the GT, half are the LQ plus a strong error. Only
    the decodes' statistics tell which to trust: the fitted head must take the good decodes and keep the LQ
    where the decode is bad."""
    g = torch.Generator().manual_seed(1)
    n = 64
    gt = torch.rand(n, 3, 16, 16, generator=g) * 0.6 + 0.2
    lq = gt + 0.05 * torch.randn(n, 3, 16, 16, generator=g)
    good = (torch.arange(n) % 2 == 0)
    decoded = torch.where(good.view(-1, 1, 1, 1), gt, lq + 0.3 * torch.randn(n, 3, 16, 16, generator=g))
    emb = torch.zeros(n, 8)
    torch.manual_seed(0)
    head = FusionHead(embed_dim=8)
    fit_fusion_head(head, fusion_fit_data(head, lq, decoded, lq.clone(), gt, emb), steps=300, lr=1e-2)
    with torch.no_grad():
        psnr = -10 * torch.log10((head(lq, decoded, lq, emb) - gt).pow(2).mean((1, 2, 3)))
    lq_psnr = -10 * torch.log10((lq - gt).pow(2).mean((1, 2, 3)))
    assert psnr[good].mean() > lq_psnr[good].mean() + 10  # the good decodes are taken
    assert psnr[~good].mean() > lq_psnr[~good].mean() - 1  # the bad ones are not (they are 15 dB below the LQ)


@pytest.mark.parametrize("decoded_lq", [True, False])
def test_fit_loss_from_moments_equals_the_loss_on_pixels(decoded_lq):
    """The fit never holds the decodes: its per-image log-MSE from the moments is the pixels' one."""
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(6, 3, 24, 20, generator=g)
    lq, dec, dec_lq = (gt + 0.1 * torch.randn(6, 3, 24, 20, generator=g) for _ in range(3))
    de = torch.randn(6, 8, generator=g)
    head = FusionHead(embed_dim=8, decoded_lq=decoded_lq)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    data = fusion_fit_data(head, lq, dec, dec_lq, gt, de)
    stats, terms = head.inputs(lq, dec, dec_lq)
    weights = head.blend_weights(stats, de)
    on_pixels = _log_mse(head.blend(lq, terms, weights), gt)
    from_moments = head.moment_log_mse(weights, data["gram"], data["means"])
    assert (on_pixels - from_moments).abs().max().item() < 1e-5
    assert data["gram"].shape == (6, 3, head.n_terms + 2, head.n_terms + 2)


def test_fusion_head_colour_gain_is_a_log_gain_about_the_mean():
    """``(mixed - mean) * exp(g) + mean + b`` per channel."""
    g = torch.Generator().manual_seed(2)
    lq, dec, dec_lq = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    de = torch.randn(2, 8, generator=g)
    mean = lq.mean((2, 3), keepdim=True)
    head = FusionHead(embed_dim=8)
    with torch.no_grad():
        n = head.n_terms
        head.fc2.bias[n:n + 3], head.fc2.bias[n + 3:] = math.log(2.0), 0.1
    assert (head(lq, dec, dec_lq, de) - ((lq - mean) * 2 + mean + 0.1)).abs().max().item() < 1e-5


def test_fusion_head_blend_in_residual_coordinates():
    """The raw outputs mean LQ + w1 (D(z) - D(z_LQ)) + w2 (D(z_LQ) - LQ) + w3 LQ (the same weight on both
    frequency bands of a term is that weight on the whole term)."""
    g = torch.Generator().manual_seed(0)
    head = FusionHead(embed_dim=8)
    with torch.no_grad():
        head.fc2.bias[:5] = torch.tensor([0.7, 0.7, -0.2, -0.2, 0.1])
    lq, dec, dec_lq = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    de = torch.randn(2, 8, generator=g)
    expected = lq + 0.7 * (dec - dec_lq) - 0.2 * (dec_lq - lq) + 0.1 * lq
    assert (head(lq, dec, dec_lq, de) - expected).abs().max().item() < 1e-6


@pytest.mark.parametrize("index,term,band", [(0, "correction", "low"), (1, "correction", "high"),
                                             (2, "round_trip", "low"), (3, "round_trip", "high")])
def test_fusion_head_weighs_each_frequency_band_on_its_own(index, term, band):
    """A weight of 1 on one band adds exactly that band (the colour fix's wavelet split) to the LQ."""
    from daclip_lora.restoration.color_fix import wavelet_decompose

    g = torch.Generator().manual_seed(3)
    head = FusionHead(embed_dim=8)
    with torch.no_grad():
        head.fc2.bias[index] = 1.0
    lq, dec, dec_lq = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(3))
    de = torch.randn(2, 8, generator=g)
    high, low = wavelet_decompose(dec - dec_lq if term == "correction" else dec_lq - lq, FusionHead.BAND_LEVELS)
    want = lq + (low if band == "low" else high)
    assert (head(lq, dec, dec_lq, de) - want).abs().max().item() < 1e-6
    assert min(low.abs().max().item(), high.abs().max().item()) > 0.05  # both bands carry signal


def test_one_decode_head_blends_the_lq_in_place_of_the_decoded_lq():
    """``decoded_lq=False``: the same blend with ``D(z_LQ) = LQ``; whatever is passed as ``D(z_LQ)`` is ignored."""
    g = torch.Generator().manual_seed(4)
    full, lite = FusionHead(embed_dim=8), FusionHead(embed_dim=8, decoded_lq=False)
    with torch.no_grad():
        for p in full.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lite.load_state_dict(full.state_dict())
    lq, dec, other = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    de = torch.randn(2, 8, generator=g)
    want = full(lq, dec, lq, de)
    assert (lite(lq, dec, None, de) - want).abs().max().item() == 0.0
    assert (lite(lq, dec, other, de) - want).abs().max().item() == 0.0
    assert (full(lq, dec, other, de) - want).abs().max().item() > 1e-2
    with pytest.raises(ValueError, match="blends D\\(z_LQ\\)"):
        full(lq, dec, None, de)


@torch.no_grad()
def _edit_record(folder, **changes):
    path = folder / "restoration.json"
    record = json.loads(path.read_text())
    record.update(changes)
    record = {k: v for k, v in record.items() if v is not None}
    path.write_text(json.dumps(record))


@torch.no_grad()
def test_fusion_head_is_saved_and_restored(assets, tmp_path):
    _, model = _one_step_model(assets)
    out = save_restoration(model, tmp_path / "restoration")
    assert json.loads((out / "restoration.json").read_text())["fusion_head"] == {"fitted": True}
    fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, read_restoration_config(out))
    load_restoration(fresh, out)
    g = torch.Generator().manual_seed(7)
    lq, dec, dec_lq = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    de = torch.randn(2, 64, generator=g)
    assert fresh.fusion.fitted is True
    assert (fresh.fusion(lq, dec, dec_lq, de) - model.fusion(lq, dec, dec_lq, de)).abs().max().item() == 0.0


@pytest.mark.parametrize("changes, message", [
    ({"format_version": FORMAT_VERSION + 1}, "upgrade daclip_lora"),
    ({"paths": None}, "pre-release daclip_lora .* re-make it by training again"),
])
def test_folder_from_another_release_is_refused(assets, tmp_path, changes, message):
    _, model = _one_step_model(assets)
    out = save_restoration(model, tmp_path / "restoration")
    _edit_record(out, **changes)
    with pytest.raises(ValueError, match=message):
        fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, read_restoration_config(out))
        load_restoration(fresh, out)


def _one_step_model(assets, fusion=True, seed=0, decoded_lq=True):
    sd = load_sd_components(assets / "tiny_sd")
    cfg = RestorationConfig(base=str(assets / "tiny_sd"), daclip_model="daclip_tiny", embed_dim=64,
                            cross_attention_dim=32, paths=conditioning_paths(num_tokens=2),
                            lora={"rank": 4, "alpha": 4}, objective="one_step", one_step_t=50, fusion=fusion,
                            fusion_decoded_lq=decoded_lq)
    torch.manual_seed(seed)
    model = RestorationUNet(sd.unet, cfg)
    add_unet_lora(model.unet, cfg.lora)
    _perturb(model, seed)
    if fusion:
        with torch.no_grad():
            for p in model.fusion.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
            model.fusion.fitted = True
    return sd, model


@torch.no_grad()
def test_one_step_folder_round_trip_keeps_the_fusion_head(assets, tmp_path):
    _, model = _one_step_model(assets)
    out = save_restoration(model, tmp_path / "restoration")
    cfg = read_restoration_config(out)
    assert (cfg.objective, cfg.one_step_t, cfg.fusion) == ("one_step", 50, True)
    fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, cfg)
    load_restoration(fresh, out)
    for a, b in zip(model.fusion.state_dict().values(), fresh.fusion.state_dict().values()):
        assert torch.equal(a, b)
    lq = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    daclip = load_daclip("daclip_tiny").eval()
    sd = load_sd_components(assets / "tiny_sd")
    merged, unmerged = RestorationPipeline.from_pretrained(out), RestorationPipeline(sd, fresh, daclip)
    # merging LoRA rounds the decodes; the head's blend must not amplify that
    gap = (merged(lq, fusion=False) - unmerged(lq, fusion=False)).abs().max().item()
    assert gap < 1e-4 and (merged(lq) - unmerged(lq)).abs().max().item() <= gap


@torch.no_grad()
@pytest.mark.parametrize("decoded_lq,decodes", [(True, 2), (False, 1)])
def test_fusion_head_inputs_set_the_decodes_and_survive_a_round_trip(assets, tmp_path, decoded_lq, decodes):
    """``fusion_decoded_lq: false`` is saved, and its pipeline decodes once: output = head(LQ, D(z), LQ)."""
    sd, model = _one_step_model(assets, decoded_lq=decoded_lq)
    out = save_restoration(model, tmp_path / "restoration")
    assert read_restoration_config(out).fusion_decoded_lq is decoded_lq
    pipe = RestorationPipeline.from_pretrained(out)
    assert pipe.model.fusion.uses_decoded_lq is decoded_lq
    calls = []
    pipe.backbone.vae.decoder.register_forward_hook(lambda *a: calls.append(1))
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    fused = pipe(lq)
    assert len(calls) == decodes
    decoded = pipe(lq, fusion=False)
    _, degra_emb = pipe.daclip_embeddings(lq)
    second = pipe.decode_latents(pipe.encode_latents(lq)) if decoded_lq else lq
    want = pipe.model.fusion(lq, decoded, second, degra_emb.float()).clamp(0, 1)
    assert (fused - want).abs().max().item() < 1e-5


@torch.no_grad()
def test_one_step_pipeline_ignores_sampling_steps_and_seed(assets, tmp_path):
    _, model = _one_step_model(assets)
    pipe = RestorationPipeline.from_pretrained(save_restoration(model, tmp_path / "restoration"))
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = []
    a = pipe(lq, steps=1, seed=0, callback=lambda i, n: calls.append((i, n)))
    b = pipe(lq, steps=7, seed=5, scheduler="euler", strength=0.3)
    assert torch.equal(a, b) and calls == [(1, 1)]


@torch.no_grad()
def test_unfitted_fusion_head_is_skipped(assets, tmp_path):
    """During training the head is not fitted yet: validation decodes without it (not the LQ image)."""
    _, model = _one_step_model(assets)
    pipe = RestorationPipeline(load_sd_components(assets / "tiny_sd"), model, load_daclip("daclip_tiny").eval())
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fused = pipe(lq)
    model.fusion.fitted = False
    plain = pipe(lq)
    model.fusion = None
    assert torch.equal(plain, pipe(lq)) and (fused - plain).abs().max().item() > 1e-3


@torch.no_grad()
def test_pipeline_feeds_daclip_at_its_own_input_size(assets):
    """A DA-CLIP built with force_image_size=64 gets 64 px inputs (a fixed 224 would not fit its positions)."""
    from daclip_lora.data.datasets import clip_batch
    from daclip_lora.clip.factory import create_model

    _, model = _one_step_model(assets)
    torch.manual_seed(0)
    daclip = create_model("daclip_tiny", force_image_size=64).eval()
    pipe = RestorationPipeline(load_sd_components(assets / "tiny_sd"), model, daclip)
    lq = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    image_emb, degra_emb = pipe.daclip_embeddings(lq)
    ref_image, ref_degra = daclip.encode_image(clip_batch(lq, 64), control=True)
    assert tuple(degra_emb.shape) == (2, 64) and (degra_emb - ref_degra).abs().max().item() == 0.0
    assert tuple(pipe(lq).shape) == (2, 3, 40, 56)


def test_one_step_pipeline_runs_with_every_model_on_meta(assets):
    _, model = _one_step_model(assets)
    pipe = RestorationPipeline(load_sd_components(assets / "tiny_sd"), model, load_daclip("daclip_tiny").eval())
    pipe.to("meta")
    out = pipe(torch.empty(2, 3, 40, 32, device="meta"), guidance_scale=2.0, tile_size=16)
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 40, 32)


def test_one_step_training_fits_the_head_and_saves_it(assets, tmp_path):
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.fusion=true", "sd.fusion_images=6")
    trainer = RestorationTrainer(opt)
    result = Engine(opt, trainer).fit()
    assert result.step == 4 and all(math.isfinite(v) for v in result.losses)
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    assert read_restoration_config(folder).fusion and trainer.fusion_report["psnr_fused"] > 0
    pipe = RestorationPipeline.from_pretrained(folder)
    assert pipe.model.fusion.fitted is True


def test_fusion_head_is_also_fitted_on_the_calibration_split(assets, tmp_path):
    calib = assets / "ds" / "val"
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.fusion=true", "sd.fusion_images=3",
               "datasets.calib.mode=MD", f"datasets.calib.dataroot={calib}")
    trainer = RestorationTrainer(opt)
    Engine(opt, trainer).fit()
    n_calib = sum(len(list((calib / d / "LQ").glob("*.png"))) for d in DEGS)
    assert n_calib > 0 and trainer.fusion_counts == {"train": 3, "calib": n_calib}
    shapes = [tuple(b["lq"].shape[1:]) for b in trainer.fusion_batches()]
    assert set(shapes) == {(3, 32, 32)}  # centre-cropped to the training patch size
    assert trainer._fusion_data()["stats"].shape[0] == 3 + n_calib


def test_fusion_data_reuses_the_latent_cache_without_changing_it(assets, tmp_path):
    """Training images' LQ latents and DA-CLIP embeddings come from the cache: same values as computing them."""
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.fusion=true", "sd.fusion_images=5")
    trainer = RestorationTrainer(opt)
    Engine(opt, trainer).fit()
    assert trainer.cached is not None
    from_cache = next(trainer.fusion_batches())
    trainer.cached = None
    computed = next(trainer.fusion_batches())
    assert from_cache.keys() == computed.keys() and from_cache["lq"].shape[0] == 5
    for key in computed:  # the cache encoded the LQ in batches of 16, the direct path in one of 5: the VAE's float
        # rounding differs with the batch, and the decoder passes it on (measured 4e-5 on decoded pixels)
        assert (from_cache[key] - computed[key]).abs().max().item() < (1e-4 if key == "decoded" else 1e-5), key


def test_one_decode_head_is_fitted_without_decoding_the_lq_latents(assets, tmp_path):
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.fusion=true", "sd.fusion_images=3",
               "sd.fusion_decoded_lq=false")
    trainer = RestorationTrainer(opt)
    Engine(opt, trainer).fit()
    calls = []
    trainer.backbone.vae.decoder.register_forward_hook(lambda *a: calls.append(1))
    assert "decoded_lq" not in next(trainer.fusion_batches())
    assert trainer.model.fusion.uses_decoded_lq is False and len(calls) == 1  # the one batch's restored latents


@pytest.mark.parametrize("overrides,message", [
    (["sd.fusion=true"], "sd.fusion needs sd.objective: one_step"),
    (["sd.objective=one_step", "datasets.calib.mode=MD", "datasets.calib.dataroot=."],
     "calibration split is only used to fit the fusion head"),
    (["sd.objective=one_step", "sd.one_step_t=1000"], "sd.one_step_t must be a timestep in [0, 1000)"),
    (["sd.objective=one_step", "sd.conditioning.lq_start=0.5"], "lq_start applies to the diffusion objective"),
    (["sd.objective=one_step", "sd.fusion_decoded_lq=false"], "sd.fusion is false"),
])
def test_objective_option_errors(assets, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        RestorationTrainer(_opt(tmp_path, assets, *overrides))


@pytest.mark.parametrize("kind, t, factor", [("raw", 999, 1.0), ("raw", 50, 1.0), ("scaled", 0, None),
                                             ("scaled", 999, None)])
def test_one_step_input_kinds(kind, t, factor):
    from diffusers import DDPMScheduler

    from daclip_lora.restoration.diffusion import one_step_input

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    expected = factor if factor is not None else sched.alphas_cumprod[t].sqrt().item()
    assert torch.allclose(one_step_input(sched, z, torch.tensor([t, t]), kind), z * expected, atol=1e-7)


def test_raw_one_step_input_is_recorded_and_fed_to_the_unet_at_restore_time(assets, tmp_path):
    """OSEDiff's input: the LQ latent unscaled at t = 999, in training and in the saved model's pipeline."""
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.one_step_input=raw", "sd.one_step_t=999")
    Engine(opt, RestorationTrainer(opt)).fit()
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    assert read_restoration_config(folder).one_step_input == "raw"
    pipe = RestorationPipeline.from_pretrained(folder, device="cpu", merge_lora=False)
    seen = []
    hook = pipe.model.unet.register_forward_pre_hook(lambda m, a: seen.append((a[0].clone(), a[1].clone())))
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pipe(lq)
    hook.remove()
    z_lq = pipe.encode_latents(pipe.prepare_image(lq))
    (model_in, t), = seen
    assert t.tolist() == [999] and torch.allclose(model_in[:, :4], z_lq, atol=1e-6)


@pytest.mark.parametrize("lq_latent", [True, False])
def test_train_conv_in_trains_the_first_convolution_and_saves_it(assets, tmp_path, lq_latent):
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.train_conv_in=true",
               f"sd.conditioning.lq_latent={str(lq_latent).lower()}")
    trainer = RestorationTrainer(opt)
    conv = trainer.model.unet.conv_in
    base = conv.base if lq_latent else conv
    before = base.weight.detach().clone()
    assert base.weight.requires_grad
    Engine(opt, trainer).fit()
    assert (base.weight - before).abs().max().item() > 0  # trained
    pipe = RestorationPipeline.from_pretrained(tmp_path / "experiments" / "r" / "models" / "restoration",
                                               device="cpu")
    loaded = pipe.model.unet.conv_in.weight[:, :before.shape[1]]  # merged: one plain conv over every channel
    assert torch.equal(loaded, base.weight.detach())


def test_vae_encoder_lora_trains_the_lq_latent_not_the_target_and_round_trips(assets, tmp_path):
    """OSEDiff's VAE-encoder LoRA: trained (its B matrices move), the GT latent stays the frozen encoder's, the
    folder restores the LQ through the same LoRA'd encoder (merged or not: same output)."""
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.vae_encoder_lora.rank=4", "sd.vae_encoder_lora.alpha=4")
    trainer = RestorationTrainer(opt)
    encoder = trainer.model.lq_encoder
    assert encoder is trainer.sd.vae.encoder
    lora_b = {n: p for n, p in encoder.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.requires_grad for p in lora_b.values())
    Engine(opt, trainer).fit()
    assert max(p.abs().max().item() for p in lora_b.values()) > 0  # trained
    sample = trainer._train[0]
    frozen_gt = load_sd_components(assets / "tiny_sd").vae.encode(sample["GT"][None] * 2 - 1).latent_dist.mean
    feats = trainer.frozen_features({k: v[None] if torch.is_tensor(v) else [v] for k, v in sample.items()})
    assert "z_lq" not in feats and "lq" in feats
    assert torch.allclose(feats["z_gt"], frozen_gt * trainer.sd.vae.config.scaling_factor, atol=1e-5)
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    unmerged = RestorationPipeline.from_pretrained(folder, device="cpu", merge_lora=False)
    merged = RestorationPipeline.from_pretrained(folder, device="cpu")
    z_unmerged = unmerged.encode_latents(lq)
    assert torch.allclose(z_unmerged, merged.encode_latents(lq), atol=1e-5)
    base = RestorationPipeline.from_pretrained(folder, device="cpu", merge_lora=False, lora_scale=0.0)
    assert (z_unmerged - base.encode_latents(lq)).abs().max() > 1e-4  # the LoRA changes the LQ latent


@pytest.mark.parametrize("overrides", [(), ("sd.vae_encoder_lora.rank=4",)])
def test_the_dry_run_parts_count_every_weight_once(assets, tmp_path, overrides):
    """A LoRA'd VAE encoder belongs to the trained model; the VAE part holds the rest of the VAE."""
    trainer = RestorationTrainer(_opt(tmp_path, assets, "sd.objective=one_step", *overrides))
    ids = [id(p) for module, _ in trainer.parts(torch.float32).values() for p in module.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) >= {id(p) for p in trainer.sd.vae.parameters()}
