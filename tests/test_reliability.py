"""Crash consistency of ``daclip-lora train`` (issue 12): SIGKILL at random moments (checkpoint writes
included), SIGINT, ``--resume``/``resume_state: auto``, and writes that fail.

The kill tests run the real CLI in subprocesses. A checkpoint is saved after every step, and the kill
comes when a random step's loss row appears, after a random 0-60 ms delay: that is during the checkpoint
write of that step or just after it. The killed run is resumed with ``--resume`` (and killed again), then
finished. Tolerance: **none**: the resumed run's per-step losses (``losses.csv``) and final LoRA weights must
be bit-identical to the uninterrupted run's (same machine, same thread count).
"""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from daclip_lora.training.engine import CheckpointWriteError, Engine, latest_checkpoint
from daclip_lora.training.options import load_options

from conftest import SD_DEGS

DEGS = SD_DEGS
STEPS = 10
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _options(folder: Path, assets: Path, kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds = assets / "ds"
    common = f"""distortion: [{', '.join(DEGS)}]
train: {{lr_G: 0.003, niter: {STEPS}, warmup_iter: 0, val_freq: 0, manual_seed: 1}}
logger: {{print_freq: 100, save_checkpoint_freq: 1}}
"""
    if kind == "controller":
        body = f"""name: k
task: controller
datasets:
  train: {{mode: CSV, csv: {ds / 'daclip_train.csv'}, batch_size: 4}}
daclip: {{model: daclip_tiny}}
controller: {{lora: {{rank: 4, alpha: 8}}}}
runtime: {{device: cpu}}
"""
    else:
        body = f"""name: k
task: restoration
datasets:
  train: {{mode: MD, dataroot: {ds / 'train'}, batch_size: 4, patch_size: 32}}
daclip: {{model: daclip_tiny}}
sd:
  base: {assets / 'tiny_sd'}
  lora: {{rank: 4, alpha: 4}}
  conditioning: {{num_tokens: 2}}
runtime: {{device: cpu, cache: {'true' if kind == 'restoration-cache' else 'false'}}}
"""
    yml = folder / "o.yml"
    yml.write_text(body + common)
    return yml


def _cmd(yml: Path, root: Path, *extra: str):
    return [sys.executable, "-m", "daclip_lora.apps.cli", "train", "-opt", str(yml), "--root", str(root), *extra]


def _losses(root: Path):
    path = root / "experiments" / "k" / "losses.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _weights(root: Path, kind: str):
    models = root / "experiments" / "k" / "models"
    name = "controller_lora/adapter_model.safetensors" if kind == "controller" else \
        "restoration/pytorch_lora_weights.safetensors"
    return load_file(str(models / name))


def _run_and_signal(cmd, root: Path, at_row: int, delay: float, sig=signal.SIGKILL) -> subprocess.CompletedProcess:
    """Start ``cmd``; when losses.csv has ``at_row`` step rows, wait ``delay`` s and send ``sig``."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if len(_losses(root)) - 1 >= at_row:
            time.sleep(delay)
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_checkpoints_whole(root: Path) -> None:
    state = root / "experiments" / "k" / "training_state"
    for p in state.iterdir():
        if p.name.isdigit():  # every step-named folder is complete and readable
            assert (p / "state.json").is_file(), p
            load_file(str(p / "trainable.safetensors"))


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    runs = {}

    def get(kind):
        if kind not in runs:
            root = tmp_path_factory.mktemp(f"ref-{kind}")
            r = subprocess.run(_cmd(_options(root, assets, kind), root), env=ENV, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            runs[kind] = (_losses(root), _weights(root, kind))
        return runs[kind]

    return get


@pytest.mark.parametrize("kind, seed", [("controller", 0), ("restoration-cache", 1), ("restoration", 2)])
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(assets, reference, tmp_path, kind, seed):
    ref_losses, ref_weights = reference(kind)
    assert len(ref_losses) == STEPS + 1  # header + one row per step
    rng = random.Random(seed)
    yml = _options(tmp_path, assets, kind)
    kills = 0
    first = rng.randint(1, STEPS // 2 - 1)
    for at_row in (first, rng.randint(first + 1, STEPS - 2)):
        r = _run_and_signal(_cmd(yml, tmp_path, "--resume"), tmp_path, at_row, rng.uniform(0, 0.06))
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
        kills += 1
        _assert_checkpoints_whole(tmp_path)
    r = subprocess.run(_cmd(yml, tmp_path, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills == 2
    assert _losses(tmp_path) == ref_losses
    weights = _weights(tmp_path, kind)
    assert weights.keys() == ref_weights.keys()
    assert max((weights[k] - ref_weights[k]).abs().max().item() for k in weights) == 0.0


def test_sigint_saves_a_checkpoint_and_exits_with_one_line(assets, reference, tmp_path):
    ref_losses, ref_weights = reference("controller")
    yml = _options(tmp_path, assets, "controller")
    yml.write_text(yml.read_text().replace("save_checkpoint_freq: 1", "save_checkpoint_freq: 1000"))
    r = _run_and_signal(_cmd(yml, tmp_path), tmp_path, 3, 0.0, sig=signal.SIGINT)
    assert r.returncode == 130, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("daclip-lora train: interrupted at step ") and "continue with --resume" in last
    step = int(last.split("interrupted at step ")[1].split(";")[0])
    assert 3 <= step < STEPS
    assert latest_checkpoint(tmp_path / "experiments" / "k" / "training_state").name == f"{step:08d}"
    r = subprocess.run(_cmd(yml, tmp_path, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(tmp_path) == ref_losses
    weights = _weights(tmp_path, "controller")
    assert max((weights[k] - ref_weights[k]).abs().max().item() for k in weights) == 0.0


def test_resume_auto_without_checkpoint_starts_fresh(assets, tmp_path):
    opt = load_options(_options(tmp_path, assets, "controller"), is_train=True, root=tmp_path,
                       overrides=["path.resume_state=auto", "train.niter=2"])
    from daclip_lora.training.tasks.controller import ControllerTrainer

    result = Engine(opt, ControllerTrainer(opt)).fit()
    assert result.step == 2 and len(result.losses) == 2


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Permission denied")])
def test_failed_checkpoint_write_is_one_line_and_keeps_the_last_complete(assets, tmp_path, monkeypatch, error):
    from daclip_lora.training.tasks.controller import ControllerTrainer

    opt = load_options(_options(tmp_path, assets, "controller"), is_train=True, root=tmp_path,
                       overrides=["train.niter=3"])
    import daclip_lora.training.engine as engine

    real = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):  # the optimizer file of the 2nd checkpoint hits the "full disk"
        if str(f).endswith("optim.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise error
        return real(obj, f, *a, **k)

    monkeypatch.setattr(engine.torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError) as e:
        Engine(opt, ControllerTrainer(opt)).fit()
    msg = str(e.value)
    assert "\n" not in msg and "could not write the step-2 checkpoint" in msg and error.strerror in msg
    state = Path(opt.path.training_state)
    assert sorted(p.name for p in state.iterdir()) == ["00000001"]  # no .tmp left, step 1 intact
    assert latest_checkpoint(state).name == "00000001"


def _killed_rmtree(real):
    def rmtree(path, *a, **k):  # deletes one file, then the process "dies"
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if files:
            files[0].unlink()
        raise KeyboardInterrupt

    return rmtree


@pytest.mark.parametrize("call", ["remove_tree", "replace_path"])
def test_a_kill_mid_delete_never_leaves_a_half_folder_under_its_name(tmp_path, monkeypatch, call):
    import daclip_lora._utils.io as io

    final = tmp_path / "00000003"
    final.mkdir()
    for name in ("a.safetensors", "state.json"):
        (final / name).write_text(name)
    new = tmp_path / "00000003.tmp"
    new.mkdir()
    (new / "state.json").write_text("new")
    monkeypatch.setattr(io.shutil, "rmtree", _killed_rmtree(io.shutil.rmtree))
    with pytest.raises(KeyboardInterrupt):
        io.remove_tree(final) if call == "remove_tree" else io.replace_path(new, final)
    assert not final.exists()  # gone as a whole, never with only some of its files
    monkeypatch.undo()
    io.remove_tree(final)  # the next call clears what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000003.tmp"]
