"""Data at scale: indexing a universal tree of many small files, building the latent cache, and an epoch's time
with and without it. Each measurement runs in a fresh process (peak RSS is the process's own)::

    python bench/bench_data_scale.py --files 100000 --cache-images 2000 8000 --threads 2

The first ``--cache-images`` size gets the three epoch rows; each further size builds and reuses its own cache
for the same number of steps, so the peak RSS of the sizes can be compared (the shards are memory-mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEGS = ["motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop", "rainy", "shadowed", "snowy",
        "uncompleted"]

INDEX = r"""
import json, resource, sys, time
from daclip_lora.data.datasets import pair_md
t0 = time.perf_counter()
pairs = pair_md(sys.argv[1], json.loads(sys.argv[2]))
print(json.dumps({"pairs": len(pairs), "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EPOCH = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer
opt = load_options(sys.argv[1], is_train=True, root=sys.argv[2], overrides=json.loads(sys.argv[3]))
trainer = RestorationTrainer(opt)
marks = {}
setup = RestorationTrainer.setup
def timed_setup(self, accelerator):
    t0 = time.perf_counter(); setup(self, accelerator); marks["setup"] = time.perf_counter() - t0
    marks["start"] = time.perf_counter()
RestorationTrainer.setup = timed_setup
Engine(opt, trainer).fit()
print(json.dumps({"setup_seconds": marks["setup"], "train_seconds": time.perf_counter() - marks["start"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tree(root: Path, pairs_per_deg: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in DEGS:
        for sub in ("LQ", "GT"):
            (root / d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(pairs_per_deg):
            img = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
            img.save(root / d / "GT" / f"{i:06d}.png", compress_level=0)
            img.save(root / d / "LQ" / f"{i:06d}.png", compress_level=0)


def _run(code: str, *args: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _options(path: Path, data: Path, steps: int) -> Path:
    from daclip_lora.tiny.locate import embedded_sd_base

    path.write_text(f"""name: scale
task: restoration
distortion: {json.dumps(DEGS)}
datasets:
  train: {{mode: MD, dataroot: {data}, batch_size: 16, patch_size: 64}}
daclip: {{model: daclip_tiny}}
sd: {{base: {embedded_sd_base()}, lora: {{rank: 8, alpha: 8}}, objective: one_step}}
train: {{niter: {steps}, val_freq: 0}}
logger: {{save_checkpoint_freq: 100000, print_freq: 100000}}
runtime: {{device: cpu}}
""")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000, help="files of the indexed tree (LQ + GT)")
    p.add_argument("--cache-images", type=int, nargs="+", default=[2000, 8000],
                   help="training pairs for the cache and epoch rows (the first size); further sizes: RSS rows")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        _tree(tmp / "big", args.files // (2 * len(DEGS)), 8)
        made = time.perf_counter() - t0
        index = _run(INDEX, str(tmp / "big"), json.dumps(DEGS))
        print(f"| index {args.files:,} files ({index['pairs']:,} pairs, 10 degradations) | "
              f"{index['seconds']:.2f} s | peak RSS {index['peak_rss_mb']:.0f} MB | (writing them took {made:.0f} s)")
        steps = args.cache_images[0] // 16  # one epoch of the first size at batch 16
        for n, size in enumerate(args.cache_images):
            data = tmp / f"small{size}"
            _tree(data, size // len(DEGS), 64)
            yml = _options(tmp / f"run{size}.yml", data, steps)
            cache = ["runtime.cache=true", f"runtime.cache_dir={tmp / f'cache{size}'}"]
            rows = [("latent cache, first run (builds it)", cache), ("latent cache, second run (reuses it)", cache)]
            if n == 0:
                rows.append(("no cache (VAE and DA-CLIP every step)", ["runtime.cache=false"]))
            for name, overrides in rows:
                r = _run(EPOCH, str(yml), str(tmp / "root"), json.dumps(overrides), str(args.threads))
                print(f"| {name}: {size} pairs, {steps} steps of 16 | setup {r['setup_seconds']:.1f} s + "
                      f"train {r['train_seconds']:.1f} s | peak RSS {r['peak_rss_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
