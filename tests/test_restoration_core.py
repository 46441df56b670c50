"""The restoration core: device correctness (meta device), tiling, shared diffusion maths, LoRA spec, per-task
option keys, scheduler names, folder restoration and layering."""

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from daclip_lora.restoration.backbone import SDBackbone
from daclip_lora.restoration.diffusion import diffusion_loss, diffusion_target
from daclip_lora.apps.cli import main
from daclip_lora.restoration.lora import add_unet_lora
from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
from daclip_lora.restoration.serialization import save_restoration
from daclip_lora.data.synthetic import make_dataset
from daclip_lora.clip.factory import load_daclip
from daclip_lora._utils.lora import AdapterError, LoraSpec
from daclip_lora.restoration.schedulers import scheduler_name
from daclip_lora.training.options import load_options, OptionsError
from daclip_lora.restoration.pipeline import RestorationPipeline
from daclip_lora.restoration.conditioning import conditioning_paths
from daclip_lora.restoration.tiling import tile_starts, tiled_map
from daclip_lora.tiny.sd import build_tiny_sd

PACKAGE = Path(__file__).resolve().parents[1] / "daclip_lora"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny_sd", seed=0)


def _pipeline(base, seed=0, **config) -> RestorationPipeline:
    backbone = SDBackbone.load(base)
    switches = {k: config.pop(k) for k in ("image_context", "degra_context", "lq_latent") if k in config}
    cfg = RestorationConfig(base=str(base), daclip_model="daclip_tiny", embed_dim=64, cross_attention_dim=32,
                            paths=conditioning_paths(num_tokens=2, **switches), lora={"rank": 4, "alpha": 4},
                            **config)
    torch.manual_seed(seed)
    model = RestorationUNet(backbone.unet, cfg)
    add_unet_lora(model.unet, cfg.lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero LoRA, projector and LQ channels, so every path changes the output
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return RestorationPipeline(backbone, model, load_daclip("daclip_tiny").eval())


def _lq(h=40, w=48, b=1, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- device slips
def test_meta_device_catches_a_tensor_left_on_the_cpu():
    """The technique below works: an op mixing a meta tensor and a CPU tensor raises."""
    with pytest.raises(RuntimeError):
        torch.ones(2, 3, device="meta") * torch.zeros(2, 1, 1)[:, :, 0]


@pytest.mark.parametrize("scheduler,guidance,strength,tile", [
    ("ddim", 1.0, 1.0, 0),
    ("ddim", 3.0, 0.6, 0),        # classifier-free guidance builds the unconditional context
    ("euler", 1.0, 1.0, 0),
    ("ddim", 2.0, 1.0, 32),       # tiled VAE + tiled denoising
])
def test_pipeline_runs_with_every_model_on_meta(base, scheduler, guidance, strength, tile):
    """Every model on the meta device: any tensor the pipeline creates on the CPU (instead of on the models'
    device) makes an op mix devices and raise, as it would on CUDA."""
    pipe = _pipeline(base).to("meta")
    lq = torch.empty(2, 3, 72, 64, device="meta")
    out = pipe(lq, steps=2, scheduler=scheduler, guidance_scale=guidance, strength=strength, tile_size=tile)
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 72, 64) and out.dtype == torch.float32


def _restoration_options(tmp_path, base, cache):
    ds = tmp_path / "ds"
    make_dataset(ds, size=2, val_size=2, patch_size=32, distortions=["noisy", "hazy"], seed=0)
    yml = tmp_path / "r.yml"
    yml.write_text(f"""name: meta
task: restoration
distortion: [noisy, hazy]
datasets:
  train: {{mode: MD, dataroot: {ds / 'train'}, batch_size: 2, patch_size: 32}}
daclip: {{model: daclip_tiny}}
sd: {{base: {base}, lora: {{rank: 2, alpha: 2}}, conditioning: {{num_tokens: 1, drop_daclip: 0.5, drop_lq: 0.5}}}}
train: {{niter: 1, warmup_iter: 0, val_freq: 0}}
runtime: {{device: cpu, cache: {str(cache).lower()}, snr_gamma: 5.0, noise_offset: 0.05}}
""")
    return load_options(yml, is_train=True, root=tmp_path)


def test_training_step_runs_with_every_model_on_meta(base, tmp_path):
    from daclip_lora.training.tasks.restoration import RestorationTrainer

    opt = _restoration_options(tmp_path, base, cache=False)
    trainer = RestorationTrainer(opt)
    trainer.setup(types.SimpleNamespace(device=torch.device("meta"), mixed_precision="no"))
    trainer.seed, trainer.step = 0, 0
    samples = [trainer.train_dataset()[i] for i in range(2)]
    batch = {k: (torch.stack([s[k] for s in samples]) if torch.is_tensor(samples[0][k]) else [s[k] for s in samples])
             for k in samples[0]}
    batch["_index"] = torch.tensor([0, 1])
    loss = trainer.training_step(trainer.model, batch)["loss"]
    assert loss.device.type == "meta" and loss.ndim == 0


# ------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("size,tile,overlap,multiple,expected", [
    (64, 64, 16, 1, [0]),
    (40, 64, 16, 1, [0]),
    (100, 64, 16, 1, [0, 36]),
    (160, 64, 16, 8, [0, 48, 96]),
    (130, 32, 8, 2, [0, 24, 48, 72, 96, 98]),
])
def test_tile_starts_cover_with_overlap(size, tile, overlap, multiple, expected):
    starts = tile_starts(size, tile, overlap, multiple)
    assert starts == expected
    assert starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("name,fn,scale,multiple", [
    ("identity", lambda x: x, 1.0, 1),
    ("upsample x2", lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), 2.0, 1),
    ("avg-pool /2", lambda x: F.avg_pool2d(x, 2), 0.5, 2),
    ("pointwise", lambda x: torch.tanh(3 * x) + x ** 2, 1.0, 1),
])
def test_tiled_map_equals_whole_for_local_operations(name, fn, scale, multiple):
    x = torch.randn(2, 3, 70, 54, generator=torch.Generator().manual_seed(0))
    if multiple > 1:
        x = x[:, :, :70 // multiple * multiple, :54 // multiple * multiple]
    tiled = tiled_map(fn, x, tile=24, overlap=8, scale=scale, multiple=multiple)
    assert tiled.shape == fn(x).shape
    assert (tiled - fn(x)).abs().max().item() <= 1e-5, name


def test_tiled_restoration_equals_whole_when_the_image_fits_one_tile(base):
    pipe = _pipeline(base)
    lq = _lq(40, 48)
    whole = pipe(lq, steps=2, tile_size=0)
    tiled = pipe(lq, steps=2, tile_size=64, tile_overlap=16)
    assert (whole - tiled).abs().max().item() == 0.0


def test_tiled_restoration_keeps_every_model_call_within_the_tile(base):
    """Memory is bounded by the tile: no UNet or VAE call sees more than one tile (times the batch)."""
    pipe = _pipeline(base)
    seen = {"unet": [], "encoder": [], "decoder": []}
    hooks = [pipe.model.unet.register_forward_pre_hook(lambda m, a: seen["unet"].append(a[0].shape[-2:])),
             pipe.backbone.vae.encoder.register_forward_pre_hook(lambda m, a: seen["encoder"].append(a[0].shape[-2:])),
             pipe.backbone.vae.decoder.register_forward_pre_hook(lambda m, a: seen["decoder"].append(a[0].shape[-2:]))]
    lq = _lq(100, 132)
    out = pipe(lq, steps=2, tile_size=32, tile_overlap=8)
    for h in hooks:
        h.remove()
    f = pipe.vae_factor
    assert tuple(out.shape) == (1, 3, 100, 132) and torch.isfinite(out).all()
    assert max(max(s) for s in seen["encoder"]) <= 32
    assert max(max(s) for s in seen["unet"]) <= 32 // f
    assert max(max(s) for s in seen["decoder"]) <= 32 // f
    assert len(seen["unet"]) > 2  # more than one tile per step


def test_automatic_tiling_starts_above_the_native_size_or_512(base):
    pipe = _pipeline(base)
    native = pipe.backbone.native_resolution
    auto = max(native, 512)
    assert native < 512 and pipe.tile_for(auto, auto, None) is None  # a small base restores 512 px whole
    assert pipe.tile_for(auto + 8, native, None) == auto
    assert pipe.tile_for(native + 8, native, native) == native
    assert pipe.tile_for(4 * native, native, 0) is None
    with pytest.raises(ValueError, match="tile_size must be >= 0"):
        pipe.tile_for(64, 64, -1)


# ------------------------------------------------------------------------- diffusion maths
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_diffusion_target_per_prediction_type(kind):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(prediction_type=kind)
    z, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    expected = {"epsilon": noise, "sample": z, "v_prediction": sched.get_velocity(z, noise, t)}[kind]
    assert torch.equal(diffusion_target(sched, z, noise, t), expected)


def test_diffusion_target_rejects_an_unknown_prediction_type():
    sched = types.SimpleNamespace(config=types.SimpleNamespace(prediction_type="flow"))
    with pytest.raises(ValueError, match="prediction_type 'flow' is not supported; use one of epsilon"):
        diffusion_target(sched, torch.zeros(1), torch.zeros(1), torch.zeros(1))


def test_min_snr_weighting_changes_only_noisy_timesteps():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    t = torch.tensor([999, 999])  # SNR << 5: weight min(snr, 5) / snr = 1
    assert diffusion_loss(sched, pred, target, t, snr_gamma=5.0).item() == pytest.approx(1.0)
    t = torch.tensor([1, 1])  # SNR >> 5: down-weighted
    assert diffusion_loss(sched, pred, target, t, snr_gamma=5.0).item() < 0.01


# ------------------------------------------------------------------------------ LoRA spec
@pytest.mark.parametrize("spec,kwargs,pattern", [
    (LoraSpec(rank=0), {}, r"sd.lora.rank must be an integer >= 1, got 0"),
    (LoraSpec(alpha=-1), {}, r"sd.lora.alpha must be positive, got -1"),
    (LoraSpec(dropout=1.0), {}, r"sd.lora.dropout must be in \[0, 1\), got 1.0"),
    (LoraSpec(targets=[]), {}, r"sd.lora.targets must be a non-empty list"),
    (LoraSpec(blocks=[0]), {"allow_blocks": False}, r"sd.lora.blocks: only the DA-CLIP controller LoRA"),
    (LoraSpec(init_lora_weights="magic"), {}, r"init_lora_weights must be true, false or one of gaussian"),
])
def test_lora_spec_validation(spec, kwargs, pattern):
    with pytest.raises(AdapterError, match=pattern):
        spec.validate("sd.lora", **kwargs)


def test_lora_spec_from_dict_rejects_unknown_keys_and_round_trips():
    spec = LoraSpec(rank=4, alpha=2.0, targets=["to_q"])
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(AdapterError, match=r"unknown LoRA setting\(s\) \['rnak'\]"):
        LoraSpec.from_dict({"rnak": 4})


def test_unet_lora_refuses_blocks(base):
    backbone = SDBackbone.load(base)
    with pytest.raises(AdapterError, match="sd.lora.blocks"):
        add_unet_lora(backbone.unet, {"rank": 2, "blocks": [0]})


# ------------------------------------------------------------------------ per-task option keys
@pytest.mark.parametrize("task,block,error", [
    ("restoration", "sd: {text_encoder_lora: {rank: 4}}", "sd.text_encoder_lora: set, but task restoration never "
                                                          "reads it (it is read by task text2image)"),
    ("text2image", "runtime: {cache: true}", "runtime.cache: set, but task text2image never reads it (it is read "
                                             "by task restoration)"),
    ("controller", "sampling: {steps: 10}", "sampling.steps: set, but task controller never reads it"),
    ("controller", "sd: {lora: {rank: 4}}", "sd.lora: set, but task controller never reads it"),
    ("restoration", "runtime: {snr_gamma: 5.0, cache: true}", None),
    ("text2image", "runtime: {snr_gamma: 5.0, noise_offset: 0.1}", None),
    ("controller", "controller: {lora: {rank: 4}}\nruntime: {ema_decay: 0.99}", None),
])
def test_unused_keys_are_errors_naming_the_task(tmp_path, task, block, error):
    yml = tmp_path / "o.yml"
    yml.write_text(f"name: x\ntask: {task}\n{block}\n")
    if error is None:
        assert load_options(yml, is_train=False, check_paths=False).task == task
    else:
        with pytest.raises(OptionsError, match=error.replace("(", r"\(").replace(")", r"\)")):
            load_options(yml, is_train=False, check_paths=False)


@pytest.mark.parametrize("name,expected", [("DDIM", "ddim"), ("dpmpp_2m", "dpm++"), ("DPM++", "dpm++"),
                                           ("Euler", "euler"), ("DPMSolverMultistepScheduler", "dpm++")])
def test_scheduler_names_are_case_insensitive_with_aliases(name, expected):
    assert scheduler_name(name) == expected


def test_unknown_scheduler_is_a_one_line_option_error(tmp_path):
    yml = tmp_path / "o.yml"
    yml.write_text("name: x\nsampling: {scheduler: ddmi}\n")
    with pytest.raises(OptionsError, match=r"sampling.scheduler: unknown scheduler 'ddmi'.*Did you mean: ddim"):
        load_options(yml, is_train=False, check_paths=False)


# -------------------------------------------------------------------------- folder restoration
@pytest.fixture(scope="module")
def weights(base, tmp_path_factory):
    pipe = _pipeline(base)
    return save_restoration(pipe.model, tmp_path_factory.mktemp("w") / "restoration")


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "c.png")
    Image.fromarray(rng.integers(0, 255, (33, 30, 3), dtype=np.uint8)).save(folder / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / "gray.bmp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_restore_command_on_a_folder_of_mixed_sizes(weights, tmp_path, capsys):
    _write_inputs(tmp_path / "in")
    code = main(["restore", "--weights", str(weights), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--grid", "--scheduler", "DPMPP_2M"])
    out = capsys.readouterr().out
    assert code == 1  # one unreadable file
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["a.png", "b.jpg", "c.png",
                                                                                    "degradations.json", "gray.bmp"]
    for name, size in (("a.png", (48, 40)), ("b.jpg", (30, 33)), ("gray.bmp", (20, 20))):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.size == size and im.format == {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name[-3:]]
    assert sorted(p.name for p in (tmp_path / "out" / "grids").iterdir()) == ["a.png", "b.png", "c.png", "gray.png"]
    assert "restored 4 image(s)" in out and "not an image, not restored" in out and "broken.png" in out


def test_restore_folder_batches_same_size_images_identically(weights, tmp_path):
    """Batching is an optimisation only: a batch of two gives what two single calls give."""
    pipe = RestorationPipeline.from_pretrained(weights)
    _write_inputs(tmp_path / "in")
    one = pipe.restore_folder(tmp_path / "in", tmp_path / "b1", batch_size=1, progress=False, steps=2)
    two = pipe.restore_folder(tmp_path / "in", tmp_path / "b2", batch_size=2, progress=False, steps=2)
    assert len(one.written) == len(two.written) == 4 and len(one.failed) == 1 and len(one.skipped) == 1
    for name in ("a.png", "c.png"):
        a = np.asarray(Image.open(tmp_path / "b1" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "b2" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1


def test_restore_folder_decodes_the_next_batch_while_restoring(weights, tmp_path, monkeypatch):
    """Reading happens in a background thread, one batch ahead of the model, and writes too; the outputs are
    those of reading everything first (the previous behaviour, checked by the batching test above)."""
    import threading

    import daclip_lora.restoration.folders as folders_module

    pipe = RestorationPipeline.from_pretrained(weights)
    for i in range(4):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    events = []
    real_read, real_call = folders_module._read_chunk, RestorationPipeline.__call__

    def read(paths):
        events.append(("read", paths[0].stem, threading.current_thread().name))
        if paths[0].stem == "1":
            next_read.set()
        return real_read(paths)

    next_read = threading.Event()

    def call(self, lq, **kwargs):
        events.append(("restore start", None, threading.current_thread().name))
        next_read.wait(timeout=5)  # set only by a prefetch running while this batch is restored
        out = real_call(self, lq, **kwargs)
        events.append(("restore end", None, threading.current_thread().name))
        return out
    monkeypatch.setattr(folders_module, "_read_chunk", read)
    monkeypatch.setattr(RestorationPipeline, "__call__", call)
    report = pipe.restore_folder(tmp_path, tmp_path / "out", batch_size=1, progress=False, steps=1)
    assert [p.name for p in report.written] == ["0.png", "1.png", "2.png", "3.png"]
    reads = [e for e in events if e[0] == "read"]
    assert [e[1] for e in reads] == ["0", "1", "2", "3"] and all(e[2].startswith("restore-io") for e in reads)
    # batch 1 is read before batch 0's restoration ends: prefetch
    assert events.index(("read", "1", reads[1][2])) < [i for i, e in enumerate(events) if e[0] == "restore end"][0]


def test_restore_refuses_to_overwrite_its_input(weights, tmp_path, capsys):
    _write_inputs(tmp_path / "in")
    code = main(["restore", "--weights", str(weights), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "in"), "--steps", "1"])
    assert code == 2 and "is the input folder" in capsys.readouterr().err


# layering: tests/test_layout.py


# ------------------------------------------------------------------ one-line errors (issue 12 regressions)
@pytest.mark.parametrize("niter", [0, -5])
def test_train_niter_below_one_is_an_option_error(tmp_path, niter):
    yml = tmp_path / "o.yml"
    yml.write_text(f"name: x\ntask: controller\ntrain: {{niter: {niter}}}\n")
    with pytest.raises(OptionsError, match=rf"train.niter: must be at least 1 \(training steps\), got {niter}"):
        load_options(yml, is_train=True, check_paths=False)


@pytest.mark.parametrize("block, key, value, message", [
    ("train", "niter", "lots", "train.niter: expected an integer, got the text 'lots'"),
    ("train", "lr_G", "fast", "train.lr_G: expected a number, got the text 'fast'"),
])
def test_bad_value_inside_optional_block_blames_the_key(tmp_path, block, key, value, message):
    yml = tmp_path / "o.yml"
    yml.write_text(f"name: x\ntask: controller\n{block}: {{{key}: {value}}}\n")
    with pytest.raises(OptionsError, match=message):
        load_options(yml, is_train=True, check_paths=False)


def test_typo_in_uir_block_is_warned_with_the_key_it_resembles(tmp_path, caplog):
    yml = tmp_path / "o.yml"
    yml.write_text("name: x\ntask: controller\ntrain: {nitre: 5, T_period: [1]}\n")
    with caplog.at_level("WARNING"):
        opt = load_options(yml, is_train=False, check_paths=False)
    assert opt.train.niter == 1000 and opt.ignored == ["train.nitre", "train.T_period"]
    hints = [r.getMessage() for r in caplog.records if "did you mean" in r.getMessage()]
    assert len(hints) == 1 and "train.nitre: not read by daclip_lora (kept, ignored); did you mean train.niter?" \
        in hints[0]


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path):
    from daclip_lora.clip.checkpoint import CheckpointError, read_safetensors_metadata, save_model

    path = tmp_path / "m.safetensors"
    save_model(load_daclip("daclip_tiny"), path, model_name="daclip_tiny")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read the .safetensors header"):
        read_safetensors_metadata(path)


def test_text_encoder_lora_of_another_rank_is_one_line(base, tmp_path):
    from daclip_lora.restoration.lora import add_text_encoder_lora
    from daclip_lora.restoration.serialization import load_restoration

    pipe = _pipeline(base)
    add_text_encoder_lora(pipe.backbone.text_encoder, {"rank": 4})
    out = save_restoration(pipe.model, tmp_path / "r", text_encoder=pipe.backbone.text_encoder)
    fresh = SDBackbone.load(base)
    add_text_encoder_lora(fresh.text_encoder, {"rank": 2})
    model = RestorationUNet(fresh.unet, pipe.model.config)
    with pytest.raises(ValueError, match=r"text-encoder LoRA does not fit this text encoder .*another") as e:
        load_restoration(model, out, text_encoder=fresh.text_encoder)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ every image on its own (issue 24, point 3)
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (1, 40), (7, 5)])
@torch.no_grad()
def test_tiny_images_are_padded_to_what_the_unet_needs(size):
    """The shipped restorer's UNet has three levels: an image under min_side (8 px) used to leave its deepest
    GroupNorm one value per group and crash; it is padded, restored and cropped back."""
    from daclip_lora.tiny.locate import embedded_restorer

    pipe = RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu")
    assert pipe.min_side == 8
    out = pipe(torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)), steps=1)
    assert tuple(out.shape) == (1, 3, *size) and torch.isfinite(out).all()


def test_a_model_failure_on_one_image_is_reported_and_the_folder_run_goes_on(weights, tmp_path, monkeypatch):
    pipe = RestorationPipeline.from_pretrained(weights)
    _write_inputs(tmp_path / "in")
    real = RestorationPipeline.__call__

    def failing(self, lq, **kw):  # the 20x20 image hits a model failure (e.g. out of memory)
        if lq.shape[-1] == 20:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, lq, **kw)

    monkeypatch.setattr(RestorationPipeline, "__call__", failing)
    report = pipe.restore_folder(tmp_path / "in", tmp_path / "out", progress=False, steps=1)
    assert sorted(p.name for p in report.written) == ["a.png", "b.jpg", "c.png"]
    reasons = dict((p.name, r) for p, r in report.failed)
    assert set(reasons) == {"broken.png", "gray.bmp"} and "out of memory" in reasons["gray.bmp"]
    assert "gray.bmp" in reasons["gray.bmp"]


def test_prompt_hidden_states_are_encoded_once_per_prompt(base, monkeypatch):
    pipe = _pipeline(base)
    calls = []
    real = pipe.backbone.encode_text  # the context and (SDXL) the pooled text, in one call per prompt
    monkeypatch.setattr(pipe.backbone, "encode_text", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = pipe(_lq(), steps=1)
    second = pipe(_lq(), steps=1)
    assert torch.equal(first, second) and calls == [[pipe.config.prompt]]
    pipe(_lq(), steps=1, prompt="another prompt")
    assert calls[-1] == ["another prompt"] and len(calls) == 2
