"""``train --dry-run``'s peak-memory estimate against measured runs, side by side for each setting.

Each setting trains the shipped tiny SD base for 2 steps on CPU in a fresh process; measured = the process's peak
RSS minus its RSS just before the trainer is built (so imports and the interpreter are not counted; the
allocator's caching, the transient peaks and the latent-cache building are). ::

    python bench/dry_run_memory.py --settings 64:4 256:8 256:8:ckpt 512:4 512:4:ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
import json, resource, sys
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

opt = load_options(sys.argv[1], is_train=True, root=sys.argv[2])
base = rss()
marks = {}
setup = RestorationTrainer.setup

def measured_setup(self, accelerator):  # the latent cache is built here: its transient peak is not the step's
    setup(self, accelerator)
    marks["weights"] = rss() - base
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM (Linux): the peak from here on
    marks["steps_base"] = rss()

RestorationTrainer.setup = measured_setup
Engine(opt, RestorationTrainer(opt)).fit()
print(json.dumps({"weights": marks["weights"], "steps": hwm() - marks["steps_base"]}))
"""


def _options(folder: Path, data: Path, patch: int, batch: int, ckpt: bool) -> Path:
    from daclip_lora.tiny.locate import embedded_sd_base

    yml = folder / "run.yml"
    yml.write_text(f"""name: m
task: restoration
distortion: [noisy, hazy]
datasets:
  train: {{mode: MD, dataroot: {data}/train, batch_size: {batch}, patch_size: {patch}}}
daclip: {{model: daclip_tiny}}
sd: {{base: {embedded_sd_base()}, lora: {{rank: 8, alpha: 8}}, objective: one_step}}
train: {{niter: 2, val_freq: 0}}
logger: {{save_checkpoint_freq: 100}}
runtime: {{device: cpu, cache: true, gradient_checkpointing: {str(ckpt).lower()}}}
""")
    return yml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["64:4", "256:8", "256:8:ckpt"], help="PATCH:BATCH[:ckpt]")
    args = p.parse_args()
    from daclip_lora.data.synthetic import make_dataset
    from daclip_lora.training.dry_run import dry_run
    from daclip_lora.training.options import load_options

    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    print("| setting | estimate: weights / the rest (MiB) | measured: weights / the steps' peak growth (MiB) | "
          "estimate / measured (the rest) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        patches = sorted({int(s.split(":")[0]) for s in args.settings})
        make_dataset(tmp / "data", size=8, val_size=2, patch_size=max(patches), distortions=["noisy", "hazy"])
        for setting in args.settings:
            patch, batch, *flag = setting.split(":")
            folder = tmp / setting.replace(":", "_")
            folder.mkdir()
            yml = _options(folder, tmp / "data", int(patch), int(batch), bool(flag))
            report = dry_run(load_options(yml, is_train=True, root=folder))
            weights, rest = report.memory["weights"], report.peak - report.memory["weights"]
            run = subprocess.run([sys.executable, "-c", MEASURE, str(yml), str(folder)], env=env, text=True,
                                 capture_output=True, check=True)
            m = json.loads(run.stdout.strip().splitlines()[-1])
            name = f"{patch} px, batch {batch}" + (", gradient checkpointing" if flag else "")
            print(f"| {name} | {weights / 2 ** 20:.0f} / {rest / 2 ** 20:.0f} | {m['weights'] / 2 ** 20:.0f} / "
                  f"{m['steps'] / 2 ** 20:.0f} | {rest / m['steps']:.2f} |")


if __name__ == "__main__":
    main()
