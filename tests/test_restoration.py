"""Degradation-aware SD LoRA: identity at step 0, what trains, diffusers interop, merge, resume, DDP, errors."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from daclip_lora.apps.cli import main
from daclip_lora.restoration.conditioning import Conditions, conditioning_paths
from daclip_lora.restoration.lora import add_restoration_lora, add_unet_lora
from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
from daclip_lora.restoration.serialization import load_restoration, read_restoration_config, save_restoration
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.restoration.pipeline import RestorationPipeline, load_sd_components
from daclip_lora.training.tasks.restoration import RestorationTrainer

from conftest import SD_DEGS

DEGS = SD_DEGS


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _opt(tmp_path, assets, *overrides, is_train=True):
    tmp_path.mkdir(parents=True, exist_ok=True)
    yml = tmp_path / "rest.yml"
    yml.write_text(f"""name: r
task: restoration
distortion: [{', '.join(DEGS)}]
datasets:
  train: {{mode: MD, dataroot: {assets / 'ds' / 'train'}, batch_size: 4, patch_size: 32}}
  val: {{mode: MD, dataroot: {assets / 'ds' / 'val'}}}
daclip: {{model: daclip_tiny}}
sd:
  base: {assets / 'tiny_sd'}
  lora: {{rank: 4, alpha: 4}}
  conditioning: {{num_tokens: 2, drop_text: 0.0, drop_daclip: 0.2, drop_lq: 0.2}}
train: {{lr_G: 0.002, niter: 4, warmup_iter: 0, val_freq: 0, manual_seed: 3}}
logger: {{print_freq: 100, save_checkpoint_freq: 2}}
runtime: {{device: cpu, cache: true}}
sampling: {{steps: 3}}
""")
    return load_options(yml, is_train=is_train, root=tmp_path, overrides=list(overrides))


#: RestorationConfig keywords that are sd.conditioning switches (turned into its paths)
SWITCHES = ("image_context", "degra_context", "lq_latent", "time_embedding", "modulated_lora", "output_norm", "paths")


def _config(assets, **config):
    switches = {k: config.pop(k) for k in SWITCHES if k in config}
    return RestorationConfig(base=str(assets / "tiny_sd"), daclip_model="daclip_tiny", embed_dim=64,
                             cross_attention_dim=32, paths=conditioning_paths(num_tokens=2, **switches),
                             lora={"rank": 4, "alpha": 4}, **config)


def _model(assets, seed=0, **config):
    sd = load_sd_components(assets / "tiny_sd")
    cfg = _config(assets, **config)
    torch.manual_seed(seed)
    model = RestorationUNet(sd.unet, cfg)
    add_restoration_lora(model, cfg.lora)
    return sd, model


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(noisy=r(2, 4, 4, 4), timesteps=torch.tensor([10, 700]), text_hidden=r(2, 77, 32),
                conditions=Conditions(image=r(2, 64), degradation=r(2, 64), lq_latent=r(2, 4, 4, 4)))


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@torch.no_grad()
def test_step0_equals_base_unet(assets):
    sd, model = _model(assets)
    base = load_sd_components(assets / "tiny_sd").unet
    x = _inputs()
    ref = base(x["noisy"], x["timesteps"], encoder_hidden_states=x["text_hidden"]).sample
    assert (model(**x) - ref).abs().max().item() <= 1e-6
    assert model.unet.conv_in.in_channels == 8


def test_trainable_parameters_are_lora_projector_and_new_conv_in_channels(assets):
    _, model = _model(assets)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("paths.context_tokens.") or n == "paths.lq_latent.conv.weight"
               for n in names)
    assert any("lora_" in n for n in names) and "paths.lq_latent.conv.weight" in names


def test_sd15_and_sd21_trainable_share_on_meta():
    from daclip_lora.restoration.sd_configs import count_restoration_parameters

    for name in ("sd15", "sd21"):
        counts = count_restoration_parameters(name, rank=8, embed_dim=512)
        assert counts["lora"] + counts["projector"] < 0.02 * counts["unet"], counts


@torch.no_grad()
def test_saved_lora_loads_into_diffusers_pipeline_identically(assets, tmp_path):
    from diffusers import StableDiffusionPipeline

    _, model = _model(assets)
    _perturb(model)
    out = save_restoration(model, tmp_path / "restoration")
    pipe = StableDiffusionPipeline.from_pretrained(str(assets / "tiny_sd"))
    pipe.load_lora_weights(str(out))
    x = _inputs()
    off = dataclasses.replace(x["conditions"], keep_daclip=torch.zeros(2), keep_lq=torch.zeros(2))
    ours = model(**{**x, "conditions": off})  # LoRA only: tokens and LQ off
    theirs = pipe.unet(x["noisy"], x["timesteps"], encoder_hidden_states=x["text_hidden"]).sample
    base = load_sd_components(assets / "tiny_sd").unet(x["noisy"], x["timesteps"],
                                                      encoder_hidden_states=x["text_hidden"]).sample
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert (ours - base).abs().max().item() > 1e-3  # the LoRA does change the output
    meta = json.loads(__import__("safetensors").safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt")
                      .metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 4


@torch.no_grad()
def test_restoration_folder_round_trip_is_exact(assets, tmp_path):
    _, model = _model(assets)
    _perturb(model)
    out = save_restoration(model, tmp_path / "restoration")
    sd2 = load_sd_components(assets / "tiny_sd")
    fresh = RestorationUNet(sd2.unet, read_restoration_config(out))
    load_restoration(fresh, out)
    x = _inputs(1)
    assert (model(**x) - fresh(**x)).abs().max().item() == 0.0


@torch.no_grad()
def test_merged_and_unmerged_restoration_agree(assets, tmp_path):
    _, model = _model(assets)
    _perturb(model)
    out = save_restoration(model, tmp_path / "restoration")
    lq = torch.rand(2, 3, 36, 44, generator=torch.Generator().manual_seed(0))  # not a multiple of 8: padded
    results = [RestorationPipeline.from_pretrained(out, merge_lora=merge)(lq, steps=3, seed=1)
               for merge in (False, True)]
    assert results[0].shape == (2, 3, 36, 44)
    assert (results[0] - results[1]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("scheduler,strength", [("ddim", 1.0), ("dpm++", 1.0), ("euler", 0.5)])
@torch.no_grad()
def test_schedulers_and_strength(assets, tmp_path, scheduler, strength):
    _, model = _model(assets)
    out = save_restoration(model, tmp_path / "restoration")
    pipe = RestorationPipeline.from_pretrained(out)
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = pipe(lq, steps=4, scheduler=scheduler, strength=strength, seed=2)
    b = pipe(lq, steps=4, scheduler=scheduler, strength=strength, seed=2)
    assert torch.isfinite(a).all() and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_training_changes_only_intended_parameters(assets, tmp_path):
    opt = _opt(tmp_path, assets)
    trainer = RestorationTrainer(opt)
    frozen = {f"{name}.{k}": v.clone() for name, m in (("vae", trainer.sd.vae), ("te", trainer.sd.text_encoder),
                                                       ("daclip", trainer.daclip))
              for k, v in m.state_dict().items()}
    base = {n: p.clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    Engine(opt, trainer).fit()
    now = {f"{name}.{k}": v for name, m in (("vae", trainer.sd.vae), ("te", trainer.sd.text_encoder),
                                            ("daclip", trainer.daclip)) for k, v in m.state_dict().items()}
    assert all(torch.equal(v, now[k]) for k, v in frozen.items())
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in base.items())
    changed = [n for n, v in trainable.items() if not torch.equal(v, params[n])]
    assert any("lora_" in n for n in changed) and "paths.lq_latent.conv.weight" in changed
    assert any(n.startswith("paths.context_tokens.") for n in changed)


def test_cached_and_uncached_training_match(assets, tmp_path):
    losses = [Engine(o, RestorationTrainer(o)).fit().losses
              for o in (_opt(tmp_path / "c", assets), _opt(tmp_path / "u", assets, "runtime.cache=false"))]
    assert np.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-6), losses


CROPS = ("runtime.cache_crops=3", "datasets.train.patch_size=16")


def test_cache_crops_cache_each_image_in_several_crops(assets, tmp_path):
    """Sample i * 3 + j is crop j of image i: three different crops, each under its image's degradation."""
    trainer = RestorationTrainer(o := _opt(tmp_path / "a", assets, *CROPS))
    Engine(o, trainer).fit()
    cache, images = trainer.cached, trainer._train.pairs
    assert len(cache) == 3 * len(images) and cache.labels == [p.degradation for p in images for _ in range(3)]
    z = cache.take([0, 1, 2], ["z_gt"])["z_gt"]
    assert z.shape[-1] == 16 // trainer.backbone.vae_factor
    assert all(not torch.equal(z[a], z[b]) for a, b in ((0, 1), (0, 2), (1, 2)))


def test_cache_crops_are_the_same_whoever_builds_them(assets, tmp_path):
    """The crops are seeded by (seed, image, crop), not by the global RNG: two caches built apart are equal."""
    caches = []
    for name in "ab":
        trainer = RestorationTrainer(o := _opt(tmp_path / name, assets, *CROPS))
        torch.manual_seed(len(caches))  # a different global RNG state for each build
        Engine(o, trainer).fit()
        caches.append(trainer.cached.take(range(len(trainer.cached)), ["z_gt", "z_lq", "degra_emb"]))
    assert all(torch.equal(caches[0][k], caches[1][k]) for k in caches[0])


def test_each_cached_crop_is_the_latent_of_its_own_pixels(assets, tmp_path):
    """What the fusion head's fit pairs: sample s's pixels (re-cut with the same seeded crop) and its cached
    latents."""
    trainer = RestorationTrainer(o := _opt(tmp_path, assets, *CROPS))
    Engine(o, trainer).fit()
    for s in (0, 4, 8):
        lq = trainer._cache_sample(s, 3, o.train.manual_seed)["LQ"][None]
        z = trainer.backbone.encode_latents(lq)
        assert (z[0] - trainer.cached[s]["z_lq"]).abs().max().item() < 1e-4, s


def test_cache_crops_resume_reproduces_the_next_losses(assets, tmp_path):
    full = Engine(o := _opt(tmp_path / "a", assets, *CROPS), RestorationTrainer(o)).fit()
    state = tmp_path / "a" / "experiments" / "r" / "training_state" / "00000002"
    resumed = Engine(o := _opt(tmp_path / "b", assets, *CROPS, f"path.resume_state={state}"),
                     RestorationTrainer(o)).fit()
    assert resumed.losses == full.losses[2:]


def test_resume_reproduces_the_next_losses(assets, tmp_path):
    full = Engine(o := _opt(tmp_path / "a", assets), RestorationTrainer(o)).fit()
    state = tmp_path / "a" / "experiments" / "r" / "training_state" / "00000002"
    resumed = Engine(o := _opt(tmp_path / "b", assets, f"path.resume_state={state}"), RestorationTrainer(o)).fit()
    assert resumed.losses == full.losses[2:]


def test_two_processes_match_one_process(assets, tmp_path):
    """gloo, 2 CPU processes x 2 samples vs 1 process x 4 samples: same global batch, same trajectory.

    Tolerance 1e-5: the two runs sum the same gradients in a different order.
    """
    opt_path = _opt(tmp_path / "ddp", assets).source
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), str(Path(__file__).parent / "ddp_worker.py"),
                          opt_path, str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [load_file(str(tmp_path / "ddp" / f"rank{r}.safetensors")) for r in (0, 1)]
    single = RestorationTrainer(o := _opt(tmp_path / "one", assets))
    Engine(o, single).fit()
    ref = single.trainable_state()
    assert ranks[0].keys() == ranks[1].keys() == ref.keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ref)
    # The gloo all-reduce sums gradients in another order than one process does; Adam normalises every gradient,
    # so those float-rounding differences move weights by O(lr * 1e-3) (measured 1.5e-5 with torch 2.14).
    assert max((ranks[0][k] - ref[k].detach()).abs().max().item() for k in ref) <= 5e-5


def test_cli_train_and_test_restoration(assets, tmp_path, capsys):
    _opt(tmp_path, assets)
    yml = str(tmp_path / "rest.yml")
    assert main(["train", "-opt", yml, "--root", str(tmp_path), "--opt", "train.niter=2"]) == 0
    assert (tmp_path / "experiments/r/models/restoration/pytorch_lora_weights.safetensors").is_file()
    assert main(["test", "-opt", yml, "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PSNR LQ" in out
    metrics = json.loads((tmp_path / "results/r/metrics.json").read_text())
    assert set(metrics["val"]) == {*DEGS, "mean"} and metrics["val"]["mean"]["n"] == 4
    assert len(list((tmp_path / "results/r/val/noisy/grids").glob("*.png"))) == 2
    # sampling.metrics: the same images scored by the evaluate code, per degradation, with their protocol
    assert main(["test", "-opt", yml, "--root", str(tmp_path), "--opt", "sampling.metrics=[psnr, ssim_y]"]) == 0
    assert "quality: psnr" in capsys.readouterr().out
    quality = json.loads((tmp_path / "results/r/metrics.json").read_text())["val"]["quality"]
    assert set(quality["groups"]) == set(DEGS) and quality["mean"]["n"] == 4
    assert abs(quality["mean"]["psnr"] - metrics["val"]["mean"]["psnr"]) < 5e-3  # pyiqa's or ours: the same PSNR
    assert (tmp_path / "results/r/val/quality/metrics.json").is_file()


# ------------------------------------------------------------------------------ errors
def test_missing_base_folder(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="Stable Diffusion base folder .*nope does not exist"):
        load_sd_components(tmp_path / "nope")


def test_incomplete_base_folder(assets, tmp_path):
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing vae/, text_encoder/, tokenizer/, scheduler/"):
        load_sd_components(tmp_path / "half")


def test_base_with_mismatched_cross_attention_dim(assets, tmp_path):
    import shutil

    broken = tmp_path / "mixed"
    shutil.copytree(assets / "tiny_sd", broken)
    cfg_path = broken / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(hidden_size=48, intermediate_size=64, projection_dim=48)
    cfg_path.write_text(json.dumps(cfg))
    (broken / "text_encoder" / "model.safetensors").unlink()
    from transformers import CLIPTextConfig, CLIPTextModel

    CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(str(broken / "text_encoder"))
    with pytest.raises(ValueError, match="cross_attention_dim is 32 but the text encoders give 48 features"):
        load_sd_components(broken)


def test_mismatched_lora_file(assets, tmp_path):
    _, model = _model(assets)
    out = save_restoration(model, tmp_path / "restoration")
    cfg = json.loads((out / "restoration.json").read_text())
    cfg["lora"]["rank"] = 8
    (out / "restoration.json").write_text(json.dumps(cfg))
    meta_free = tmp_path / "restoration"
    sd = load_sd_components(assets / "tiny_sd")
    other = RestorationUNet(sd.unet, read_restoration_config(meta_free))
    add_unet_lora(other.unet, {"rank": 8})
    with pytest.raises(ValueError, match="does not fit this UNet"):
        load_restoration(other, out)


def test_ema_decay_one_keeps_the_initial_weights(assets, tmp_path):
    opt = _opt(tmp_path, assets, "runtime.ema_decay=1.0")
    trainer = RestorationTrainer(opt)
    initial = {k: v.detach().clone() for k, v in trainer.trainable_state().items()}
    result = Engine(opt, trainer).fit()
    assert result.losses[0] != result.losses[-1]  # the weights did train...
    final = trainer.trainable_state()  # ...but the saved (EMA) weights are the initial ones
    assert all(torch.equal(initial[k], final[k]) for k in initial)


def test_bf16_mixed_precision_keeps_trainable_weights_fp32(assets, tmp_path):
    opt = _opt(tmp_path, assets, "runtime.mixed_precision=bf16", "train.niter=2")
    trainer = RestorationTrainer(opt)
    result = Engine(opt, trainer).fit()
    assert all(np.isfinite(result.losses))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
