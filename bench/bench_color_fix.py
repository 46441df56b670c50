"""Per-degradation effect of each colour fix (none, wavelet, adain, auto) on the demo's held-out splits.

Usage (after ``daclip-lora demo --out runs/demo``, whose data it reads; the model is the shipped tiny restorer,
which is that demo's model)::

    python bench/bench_color_fix.py --demo runs/demo [--weights W]

Prints a Markdown table (``val / test`` PSNR per cell) and writes ``color_fix.json`` beside the demo's summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

FIXES = ("none", "wavelet", "adain", "auto")


def measure(pipe, data: Path) -> dict:
    from daclip_lora._utils.image_metrics import psnr
    from daclip_lora.data.images import read_image

    out: dict = {}
    for split in ("val", "test"):
        for folder in sorted(p for p in (data / split).iterdir() if p.is_dir()) if (data / split).is_dir() else []:
            lqs = sorted((folder / "LQ").glob("*.png"))
            gts = [read_image(folder / "GT" / p.name) for p in lqs]
            lq = torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in lqs])
            row = {"lq": float(np.mean([psnr(x.permute(1, 2, 0).numpy(), g) for x, g in zip(lq, gts)]))}
            for fix in FIXES:
                restored = pipe(lq, color_fix=fix)
                row[fix] = float(np.mean([psnr(x.permute(1, 2, 0).numpy(), g) for x, g in zip(restored, gts)]))
            out.setdefault(split, {})[folder.name] = row
    return out


def table(out: dict) -> str:
    splits = [s for s in ("val", "test") if s in out]
    lines = ["| degradation | LQ | " + " | ".join(FIXES) + " |", "|---|" + "---|" * (len(FIXES) + 1)]
    for deg in out[splits[0]]:
        cells = [" / ".join(f"{out[s][deg][k]:.2f}" for s in splits) for k in ("lq", *FIXES)]
        lines.append(f"| {deg} | " + " | ".join(cells) + " |")
    means = [" / ".join(f"{np.mean([r[k] for r in out[s].values()]):.2f}" for s in splits) for k in ("lq", *FIXES)]
    lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import EMBEDDED_RESTORER

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"))
    ap.add_argument("--weights", type=Path, default=EMBEDDED_RESTORER)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = RestorationPipeline.from_pretrained(args.weights, device="cpu")
    out = measure(pipe, args.demo / "data")
    (args.demo / "color_fix.json").write_text(json.dumps(out, indent=1))
    print(table(out))


if __name__ == "__main__":
    main()
