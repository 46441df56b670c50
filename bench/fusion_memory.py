"""Peak memory of the fusion head's fit against ``sd.fusion_images``: one training step, then the fit, in a fresh
process per size (peak RSS is the process's own)::

    python bench/fusion_memory.py --images 256 1024 --patch 128
    PYTHONPATH=/path/to/an/older/checkout python bench/fusion_memory.py ...   # the same run on older code

A synthetic universal tree of random 128 px pairs, the shipped tiny SD and DA-CLIP bases, no latent cache. Prints
one Markdown row per size: seconds of the fit (decodes included) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer
opt = load_options(sys.argv[1], is_train=True, root=sys.argv[2], overrides=[f"sd.fusion_images={sys.argv[3]}"])
trainer = RestorationTrainer(opt)
fit = RestorationTrainer.fit_fusion
marks = {}
def timed(self):
    marks["rss_before"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter(); out = fit(self); marks["seconds"] = time.perf_counter() - t0
    return out
RestorationTrainer.fit_fusion = timed
Engine(opt, trainer).fit()
print(json.dumps({**marks, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tree(root: Path, per_degradation: int, size: int, degs) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in degs:
        for sub in ("LQ", "GT"):
            (root / d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(per_degradation):
            gt = rng.random((size, size, 3))
            Image.fromarray((gt * 255).astype(np.uint8)).save(root / d / "GT" / f"{i:05d}.png", compress_level=0)
            lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
            Image.fromarray((lq * 255).astype(np.uint8)).save(root / d / "LQ" / f"{i:05d}.png", compress_level=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--patch", type=int, default=128)
    args = p.parse_args()
    from daclip_lora.tiny.locate import embedded_sd_base

    degs = ["noisy", "hazy", "low-light", "rainy"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _tree(tmp / "data", -(-max(args.images) // len(degs)), args.patch, degs)
        yml = tmp / "run.yml"
        yml.write_text(f"""name: fusion
task: restoration
distortion: {json.dumps(degs)}
datasets:
  train: {{mode: MD, dataroot: {tmp / 'data'}, batch_size: 4, patch_size: {args.patch}}}
daclip: {{model: daclip_tiny}}
sd: {{base: {embedded_sd_base()}, lora: {{rank: 4, alpha: 4}}, objective: one_step, fusion: true}}
train: {{niter: 1, val_freq: 0}}
logger: {{save_checkpoint_freq: 100000, print_freq: 100000}}
runtime: {{device: cpu}}
""")
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        print("| fusion_images | fit (decodes included) | peak RSS | RSS before the fit |\n|---|---|---|---|")
        for n in args.images:
            out = subprocess.run([sys.executable, "-c", RUN, str(yml), str(tmp / f"root{n}"), str(n)], env=env,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n} | {r['seconds']:.1f} s | {r['peak_rss_mb']:.0f} MB | {r['rss_before']:.0f} MB |",
                  flush=True)


if __name__ == "__main__":
    main()
