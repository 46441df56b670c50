"""A run a researcher can watch, compare and ship: TensorBoard scalars and images, validation per degradation
with EMA, the best checkpoint, export, honest optimizers and UIR keys, resume on another process count."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip_lora.apps.cli import main
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer

from conftest import SD_DEGS

DATA = Path(__file__).parent / "data"


def _options(root: Path, assets: Path, extra: str = "", niter: int = 4) -> Path:
    """A tiny restoration run: 2 degradations, val every 2 steps, 3 val images of each degradation."""
    root.mkdir(parents=True, exist_ok=True)
    yml = root / "run.yml"
    yml.write_text(f"""name: r
task: restoration
use_tb_logger: true
distortion: [{', '.join(SD_DEGS)}]
datasets:
  train: {{mode: MD, dataroot: {assets / 'ds' / 'train'}, batch_size: 4, patch_size: 32}}
  val: {{mode: MD, dataroot: {assets / 'ds' / 'val'}, n_per_degradation: 1}}
daclip: {{model: daclip_tiny}}
sd:
  base: {assets / 'tiny_sd'}
  lora: {{rank: 4, alpha: 4}}
  conditioning: {{num_tokens: 2}}
  objective: one_step
train: {{lr_G: 0.002, niter: {niter}, warmup_iter: 0, val_freq: 2, manual_seed: 3}}
logger: {{print_freq: 100, save_checkpoint_freq: 1, keep_checkpoints: 3}}
runtime: {{device: cpu, cache: true}}
{extra}""")
    return yml


def _scalars(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = [p for p in (run / "tb_logger").rglob("events.out.tfevents.*")][:1]
    acc = EventAccumulator(str(folder.parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(sd_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    yml = _options(root, sd_assets)
    assert main(["train", "-opt", str(yml), "--root", str(root)]) == 0
    return {"root": root, "run": root / "experiments" / "r", "yml": yml}


# --------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_gets_each_loss_term_lr_and_throughput(trained):
    tags = set(_scalars(trained["run"]).Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/peak_memory_mb"} <= tags


def test_tensorboard_gets_validation_per_degradation_and_its_mean(trained):
    acc = _scalars(trained["run"])
    tags = set(acc.Tags()["scalars"])
    assert {f"val/psnr/{d}" for d in SD_DEGS} | {"val/psnr", "val/ssim"} <= tags
    steps = [e.step for e in acc.Scalars("val/psnr")]
    assert steps == [2, 4]
    mean = acc.Scalars("val/psnr")[-1].value
    per = [acc.Scalars(f"val/psnr/{d}")[-1].value for d in SD_DEGS]
    assert mean == pytest.approx(np.mean(per), abs=1e-4)
    assert "val/grid" in acc.Tags()["images"]


def test_validation_takes_n_images_of_each_degradation(sd_assets, tmp_path):
    opt = load_options(_options(tmp_path, sd_assets), is_train=True, root=tmp_path)
    trainer = RestorationTrainer(opt)
    degs = [trainer._val.pairs[i].degradation for i in trainer.validation_indices()]
    assert sorted(degs) == sorted(SD_DEGS)  # n_per_degradation: 1, one of each
    opt.datasets["val"].n_per_degradation = 2
    assert [trainer._val.pairs[i].degradation for i in trainer.validation_indices()] == \
        [SD_DEGS[0]] * 2 + [SD_DEGS[1]] * 2


# ---------------------------------------------------------------------------------------- checkpoints kept
def test_best_and_the_newest_checkpoints_are_kept(trained):
    state = trained["run"] / "training_state"
    assert sorted(p.name for p in state.iterdir()) == ["00000002", "00000003", "00000004", "best"]
    best = json.loads((state / "best" / "state.json").read_text())
    values = {e.step: e.value for e in _scalars(trained["run"]).Scalars("val/psnr")}
    assert best["best_metric"] == "psnr" and best["step"] == max(values, key=values.get)
    assert best["best_value"] == pytest.approx(max(values.values()), abs=1e-4)


def test_ema_validates_with_the_ema_weights_and_logs_the_raw_ones(sd_assets, tmp_path):
    yml = _options(tmp_path, sd_assets, extra="  ema_decay: 0.5\n", niter=2)
    yml.write_text(yml.read_text().replace("runtime: {device: cpu, cache: true}\n  ema_decay: 0.5",
                                           "runtime: {device: cpu, cache: true, ema_decay: 0.5}"))
    opt = load_options(yml, is_train=True, root=tmp_path)
    result = Engine(opt, RestorationTrainer(opt)).fit()
    metrics = result.validations[2]
    assert {"psnr", "raw/psnr"} <= set(metrics) and metrics["psnr"] != metrics["raw/psnr"]


# ------------------------------------------------------------------------------------------------- export
def test_a_checkpoint_exports_to_a_folder_restore_uses(trained, sd_assets, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(trained["run"] / "training_state" / "best"), "--output",
                 str(out)]) == 0
    assert "exported step" in capsys.readouterr().out and (out / "restoration.json").is_file()
    lq = next((sd_assets / "ds" / "val" / "noisy" / "LQ").glob("*.png"))
    assert main(["restore", "--weights", str(out), "--input", str(lq), "--output", str(tmp_path / "r1")]) == 0
    assert main(["restore", "--weights", str(trained["run"] / "training_state" / "best"), "--input", str(lq),
                 "--output", str(tmp_path / "r2")]) == 0
    a = np.asarray(Image.open(tmp_path / "r1" / lq.name), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "r2" / lq.name), dtype=np.int16)
    assert np.array_equal(a, b)  # restoring from the checkpoint is restoring its export


def test_exported_weights_are_the_checkpoints(trained, tmp_path):
    from safetensors.torch import load_file

    from daclip_lora.training.export import export_checkpoint

    checkpoint = trained["run"] / "training_state" / "00000003"
    result = export_checkpoint(checkpoint, tmp_path / "e")
    opt = load_options(trained["yml"], is_train=True, root=trained["root"])
    trainer = RestorationTrainer(opt, data=False)
    from daclip_lora.restoration.serialization import load_restoration

    load_restoration(trainer.model, result.folder)
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    state = trainer.trainable_state()
    assert result.step == 3 and result.weights == "raw"
    assert all(torch.equal(state[k].detach(), saved[k]) for k in saved)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is not a training-state folder"),
    (lambda p: None, "is not a training-state folder"),
])
def test_export_of_something_else_is_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "x")
    assert main(["export", "--checkpoint", str(tmp_path / "x"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("name,canonical", [("AdamW", "AdamW"), ("adam", "Adam"), ("LION", "Lion"),
                                            ("adamw8bit", "AdamW8bit")])
def test_supported_optimizers_are_taken_by_name(sd_assets, tmp_path, name, canonical):
    opt = load_options(_options(tmp_path, sd_assets), is_train=True, root=tmp_path,
                       overrides=[f"train.optimizer={name}"])
    assert opt.train.optimizer == canonical


def test_an_unknown_optimizer_is_one_line_naming_the_supported_ones(sd_assets, tmp_path, capsys):
    yml = _options(tmp_path, sd_assets)
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path), "--opt", "train.optimizer=SGD"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.optimizer" in err and "AdamW, Adam, AdamW8bit, Lion" in err and len(err.splitlines()) == 1


def _lion():
    return pytest.importorskip("bitsandbytes").optim.Lion


@pytest.mark.parametrize("optimizer,kind", [("Adam", lambda: torch.optim.Adam), ("AdamW", lambda: torch.optim.AdamW),
                                            ("Lion", _lion)])
def test_the_optimizer_asked_for_is_the_one_that_trains(sd_assets, tmp_path, optimizer, kind, monkeypatch):
    made = []
    real = Engine._optimizer

    def spy(self, named):
        optim, sched = real(self, named)
        made.append(optim)
        return optim, sched

    monkeypatch.setattr(Engine, "_optimizer", spy)
    opt = load_options(_options(tmp_path, sd_assets, niter=1), is_train=True, root=tmp_path,
                       overrides=[f"train.optimizer={optimizer}", "train.val_freq=0", "use_tb_logger=false"])
    result = Engine(opt, RestorationTrainer(opt)).fit()
    assert type(made[0]) is kind() and np.isfinite(result.losses).all()


def test_adamw8bit_on_a_cpu_is_one_line(sd_assets, tmp_path, capsys):
    yml = _options(tmp_path, sd_assets, niter=1)
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path), "--opt", "train.optimizer=AdamW8bit"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "AdamW8bit" in errors[0] and "CUDA device" in errors[0]


def test_uir_files_list_every_key_they_set_that_nothing_reads(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="daclip_lora.training.options"):
        train = load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False)
        test = load_options(DATA / "uir_test.yml", is_train=False, root=tmp_path, check_paths=False)
    assert sorted(train.ignored) == sorted([
        "sde", "degradation", "network_G", "path.pretrain_model_G", "path.strict_load", "train.is_weighted",
        "train.loss_type", "train.weight", "model", "gpu_ids", "datasets.train.name", "datasets.train.color",
        "datasets.val.name"])
    assert {"sde", "network_G", "model", "gpu_ids"} <= set(test.ignored) and len(test.ignored) <= 12
    assert sum("read but not used" in r.getMessage() for r in caplog.records) == 2  # one line per file
    assert train.logger.use_tb_logger and train.train.optimizer == "AdamW"


# ------------------------------------------------------------------------------------------------- resume
def test_resume_on_two_processes_continues_a_one_process_run(sd_assets, tmp_path):
    """Steps 1-2 on one process, 3-4 on two (torchrun, gloo): the same weights as 4 steps on one process (a
    constant lr: the first part's shorter niter must not change its schedule)."""
    from safetensors.torch import load_file

    yml = _options(tmp_path / "a", sd_assets, extra="", niter=4)
    yml.write_text(yml.read_text().replace("use_tb_logger: true", "use_tb_logger: false")
                   .replace("val_freq: 2", "val_freq: 0, lr_scheme: constant"))
    opt = load_options(yml, is_train=True, root=tmp_path / "a", overrides=["train.niter=2"])
    Engine(opt, RestorationTrainer(opt)).fit()
    state = tmp_path / "a" / "experiments" / "r" / "training_state" / "00000002"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "daclip_lora.apps.cli", "train", "-opt",
                          str(yml), "--root", str(tmp_path / "a"), "--opt", f"path.resume_state={state}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming" in run.stderr and "on 2 processes (written by 1)" in run.stderr
    resumed = load_file(str(tmp_path / "a" / "experiments" / "r" / "training_state" / "00000004" /
                            "trainable.safetensors"))
    opt = load_options(yml, is_train=True, root=tmp_path / "b")
    single = RestorationTrainer(opt)
    Engine(opt, single).fit()
    ref = single.trainable_state()
    assert max((resumed[k] - ref[k].detach()).abs().max().item() for k in ref) <= 5e-5


def test_resume_with_another_global_batch_names_the_value_to_set(sd_assets, tmp_path, capsys):
    yml = _options(tmp_path, sd_assets, niter=2)
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path), "--opt", "train.val_freq=0"]) == 0
    state = tmp_path / "experiments" / "r" / "training_state" / "00000002"
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path), "--opt", "train.niter=3", "--opt",
                 f"path.resume_state={state}", "--opt", "datasets.train.batch_size=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "global batch of 4" in err and "multiply to 4" in err


# ------------------------------------------------------------------------------------------------ dry run
def test_dry_run_prints_the_plan_and_writes_nothing(sd_assets, tmp_path, capsys):
    yml = _options(tmp_path, sd_assets)
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train: 8 (noisy 4, hazy 4)" in out and "val: 4 (noisy 2, hazy 2)" in out
    assert "UNet (LoRA, DA-CLIP paths, head)" in out and "DA-CLIP" in out
    assert "steps: 4 x 4 samples = 16 samples, 2.0 epochs of 8 training samples" in out
    assert "estimated peak memory per device" in out and "activations" in out
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("overrides,smaller", [
    (["runtime.gradient_checkpointing=true"], "activations"),
    (["runtime.mixed_precision=bf16"], "activations"),
    (["train.optimizer=Lion"], "optimizer"),
])
def test_dry_run_estimate_moves_with_the_settings(sd_assets, tmp_path, overrides, smaller):
    from daclip_lora.training.dry_run import dry_run

    yml = _options(tmp_path, sd_assets)
    base = dry_run(load_options(yml, is_train=True, root=tmp_path)).memory
    changed = dry_run(load_options(yml, is_train=True, root=tmp_path, overrides=overrides)).memory
    assert 0 < changed[smaller] < base[smaller]


def test_dry_run_activations_grow_with_the_batch(sd_assets, tmp_path):
    from daclip_lora.training.dry_run import dry_run

    yml = _options(tmp_path, sd_assets)
    two, four = (dry_run(load_options(yml, is_train=True, root=tmp_path,
                                      overrides=[f"datasets.train.batch_size={b}"])).memory["activations"]
                 for b in (2, 4))
    assert four == pytest.approx(2 * two, rel=0.05)


# ----------------------------------------------------------------------------- half-precision frozen weights
def test_bf16_keeps_frozen_weights_in_bf16_and_trainable_ones_in_fp32(sd_assets, tmp_path, monkeypatch):
    """As diffusers' LoRA scripts: frozen UNet, VAE, text encoder and DA-CLIP in bf16; LoRA, DA-CLIP paths and
    optimizer state in fp32. The losses agree with the fp32 run within 2 % (CPU bf16, 3 steps)."""
    made = []
    real = Engine._optimizer
    monkeypatch.setattr(Engine, "_optimizer", lambda self, named: made.append(real(self, named)) or made[-1])
    runs = {}
    for precision in ("no", "bf16"):
        opt = load_options(_options(tmp_path / precision, sd_assets, niter=3), is_train=True,
                           root=tmp_path / precision, overrides=[f"runtime.mixed_precision={precision}",
                                                                 "train.val_freq=0", "use_tb_logger=false"])
        trainer = RestorationTrainer(opt)
        runs[precision] = (Engine(opt, trainer).fit().losses, trainer)
    trainer = runs["bf16"][1]
    assert trainer.model.fusion is None  # (a fusion head would stay fp32: it is fitted after training)
    norms = {id(p) for m in trainer.model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))
             for p in m.parameters(recurse=False)}
    assert {p.dtype for p in trainer.model.parameters() if not p.requires_grad and id(p) not in norms} == \
        {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    for module in (trainer.sd.vae, trainer.sd.text_encoder, trainer.daclip):
        assert torch.bfloat16 in {p.dtype for p in module.parameters()}
    state = made[-1][0].state_dict()["state"]
    assert state and all(t.dtype == torch.float32 for s in state.values() for t in s.values() if t.ndim > 0)
    assert np.allclose(runs["bf16"][0], runs["no"][0], rtol=0.02), (runs["bf16"][0], runs["no"][0])


# ------------------------------------------------------------------------------------------ latent cache
def _cache_files(tmp_path, n=4):
    files = []
    for i in range(n):
        f = tmp_path / "img" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    return files


def test_latent_cache_is_built_once_and_recomputes_only_a_changed_file(tmp_path):
    import os

    from daclip_lora.training.latent_cache import LatentCache, sample_key

    files = _cache_files(tmp_path)
    computed = []

    def compute(indices):
        computed.extend(indices)
        return {"z": torch.stack([torch.full((2, 2), float(i) + 10 * len(computed)) for i in indices])}

    keys = [sample_key([f], 32, "center") for f in files]
    assert LatentCache.build(tmp_path / "c", keys, compute, batch=3, progress=False) == 4
    first = LatentCache(tmp_path / "c", keys, ["a", "b", "a", "b"])
    assert first[2]["degradation"] == "a" and first[2]["z"].shape == (2, 2)
    assert LatentCache.build(tmp_path / "c", keys, compute, batch=3, progress=False) == 0  # a later run
    os.utime(files[1], ns=(0, 10 ** 18))  # the file changed: a new key
    keys = [sample_key([f], 32, "center") for f in files]
    computed.clear()
    assert LatentCache.build(tmp_path / "c", keys, compute, batch=3, progress=False) == 1 and computed == [1]
    again = LatentCache(tmp_path / "c", keys, ["a"] * 4)
    assert torch.equal(again[0]["z"], first[0]["z"]) and not torch.equal(again[1]["z"], first[1]["z"])
    assert sorted(again.take([3, 0], ["z"])["z"][:, 0, 0].tolist()) == sorted([first[3]["z"][0, 0].item(),
                                                                                first[0]["z"][0, 0].item()])


def test_latent_cache_keeps_a_bounded_number_of_shards_open(tmp_path, monkeypatch):
    """Reading every sample of a cache of many shards keeps at most MAX_OPEN of them mapped, and every value read
    (again after its shard was closed) is the one written."""
    from daclip_lora.training.latent_cache import LatentCache

    keys = [f"k{i}" for i in range(12)]
    LatentCache.build(tmp_path / "c", keys, lambda idx: {"z": torch.tensor(idx, dtype=torch.float32)[:, None]},
                      batch=1, progress=False)  # one shard per sample
    monkeypatch.setattr(LatentCache, "MAX_OPEN", 3)
    cache = LatentCache(tmp_path / "c", keys, ["a"] * 12)
    for i in list(range(12)) + [0, 5, 11, 0]:
        assert cache[i]["z"].item() == i
        assert len(cache._open) <= 3
    assert list(cache._open) == [cache.shard_of[i] for i in (5, 11, 0)]  # least recently read first


def test_a_crop_change_is_another_key(tmp_path):
    from daclip_lora.training.latent_cache import sample_key

    (f,) = _cache_files(tmp_path, 1)
    assert sample_key([f], 32, "center") != sample_key([f], 64, "center")


def test_training_runs_share_the_cache_on_disk(sd_assets, tmp_path, caplog):
    import logging

    runs = []
    with caplog.at_level(logging.INFO, logger="daclip_lora.training.latent_cache"):
        for name in ("a", "b"):
            opt = load_options(_options(tmp_path / name, sd_assets, niter=1), is_train=True, root=tmp_path / name,
                               overrides=[f"runtime.cache_dir={tmp_path / 'cache'}", "train.val_freq=0",
                                          "use_tb_logger=false"])
            runs.append(Engine(opt, RestorationTrainer(opt)).fit().losses)
    built = [r.getMessage() for r in caplog.records if "latent cache" in r.getMessage()]
    assert "8 samples computed, 0 reused" in built[0] and "0 samples computed, 8 reused" in built[1]
    assert runs[0] == runs[1]
