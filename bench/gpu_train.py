"""Training and one-step restoration at real size: random-weight SD 1.5 and SDXL architectures, the released
DA-CLIP's architecture (random), our trainer and pipeline end to end. Each setting runs in a fresh process.

On a GPU (the ``docs/gpu.md`` table; nothing in CI depends on it)::

    python bench/gpu_train.py --device cuda --families sd1 sdxl --batch 1 4 --checkpointing on off

On the CPU, the real-size run of docs/benchmarks.md (64 px, 3 steps, gradient checkpointing)::

    python bench/gpu_train.py --device cpu --resolution 64 --steps 3 --batch 1 --checkpointing on --precision no

Per setting: seconds per training step (the steps after the first), peak memory (CUDA: max allocated; CPU: the
process's peak RSS), and the one-step restore time per image of the exported model at the training resolution.
The resolution defaults to the family's native one (512 px for SD 1.5, 1024 px for SDXL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NATIVE = {"sd1": 512, "sd2-v": 768, "sd-turbo": 512, "sdxl": 1024}

RUN = r"""
import json, resource, sys, time, torch
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer
from daclip_lora.restoration.pipeline import RestorationPipeline
yml, root, device = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
opt = load_options(yml, is_train=True, root=root)
trainer = RestorationTrainer(opt)
step, marks = RestorationTrainer.training_step, []
def timed(self, model, batch):
    if device == "cuda": torch.cuda.synchronize()
    marks.append(time.perf_counter())
    return step(self, model, batch)
RestorationTrainer.training_step = timed
t0 = time.perf_counter()
Engine(opt, trainer).fit()
train_total = time.perf_counter() - t0
later = marks[1:]  # step starts after the first step: the first one warms up
per_step = (later[-1] - later[0]) / (len(later) - 1) if len(later) > 1 else float("nan")
peak = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
del trainer
pipe = RestorationPipeline.from_pretrained(f"{root}/experiments/{opt.name}/models/restoration", device=device,
                                           precision="bf16" if device == "cuda" else "fp32")
size = opt.datasets["train"].patch_size
lq = torch.rand(1, 3, size, size)
pipe(lq, tile_size=0)
if device == "cuda": torch.cuda.synchronize()
t1 = time.perf_counter()
out = pipe(lq, tile_size=0)
if device == "cuda": torch.cuda.synchronize()
print(json.dumps({"s_per_step": per_step, "train_seconds": train_total, "peak_gib": peak,
                  "restore_s": time.perf_counter() - t1, "finite": bool(torch.isfinite(out).all())}))
"""


def _data(root: Path, size: int, n: int = 8) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for deg in ("noisy", "hazy"):
        for sub in ("LQ", "GT"):
            (root / deg / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
            img.save(root / deg / "GT" / f"{i}.png")
            img.save(root / deg / "LQ" / f"{i}.png")
    return root


def _options(path: Path, base: Path, data: Path, size: int, batch: int, steps: int, checkpointing: bool,
             precision: str, device: str) -> Path:
    path.write_text(f"""name: real_size
task: restoration
distortion: [noisy, hazy]
datasets:
  train: {{mode: MD, dataroot: {data}, batch_size: {batch}, patch_size: {size}}}
daclip: {{model: daclip_ViT-B-32}}
sd:
  base: {base}
  lora: {{rank: 8, alpha: 8}}
  objective: one_step
  conditioning: {{num_tokens: 4, time_embedding: true, output_norm: true}}
train: {{niter: {steps}, warmup_iter: 0, val_freq: 0, lr_G: 1.0e-4}}
logger: {{print_freq: 1, save_checkpoint_freq: {steps}}}
runtime: {{device: {device}, mixed_precision: "{precision}", gradient_checkpointing: {str(checkpointing).lower()}}}
""")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["sd1", "sdxl"], choices=sorted(NATIVE))
    p.add_argument("--device", default="cuda")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: the family's native size)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="keep the built folders here (default: a temp folder)")
    args = p.parse_args()
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        print("| family | resolution | batch | checkpointing | precision | s/step | peak memory | restore s/image |"
              "\n|---|---|---|---|---|---|---|---|", flush=True)
        for family in args.families:
            size = args.resolution or NATIVE[family]
            base = work / f"{family}_full"
            if not (base / "model_index.json").exists():  # in its own process: its memory is freed after
                subprocess.run([sys.executable, "-c", "import sys; from daclip_lora.tiny.sd import build_tiny_sd; "
                                "build_tiny_sd(sys.argv[1], family=sys.argv[2], full_size=True)", str(base), family],
                               env=env, check=True)
            data = _data(work / f"data_{size}", size)
            for batch in args.batch:
                for ckpt in args.checkpointing:
                    run = work / f"run_{family}_{size}_{batch}_{ckpt}"
                    run.mkdir(parents=True, exist_ok=True)
                    yml = _options(run / "train.yml", base, data, size, batch, args.steps, ckpt == "on",
                                   args.precision, args.device)
                    out = subprocess.run([sys.executable, "-c", RUN, str(yml), str(run), args.device,
                                          str(args.threads)], env=env, capture_output=True, text=True)
                    if out.returncode:
                        print(f"| {family} | {size} | {batch} | {ckpt} | {args.precision} | failed: "
                              f"{out.stderr.strip().splitlines()[-1]} | | |", flush=True)
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"| {family} | {size} | {batch} | {ckpt} | {args.precision} | {r['s_per_step']:.2f} | "
                          f"{r['peak_gib']:.1f} GiB | {r['restore_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
