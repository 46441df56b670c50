"""Fidelity / perception control: PSNR and a no-reference metric as the UNet LoRA's scale (and the guidance
scale) move, on the demo's two held-out splits.

Usage (after ``daclip-lora demo --out runs/demo``, whose data it reads; the model is the shipped tiny restorer,
that demo's model; needs the metrics extra for PIQE, the no-reference metric computable offline)::

    python bench/bench_fidelity.py --demo runs/demo

Every variant restores the same batch in turn (interleaved, one run). Prints a Markdown table (``val / test``
per cell) and writes ``fidelity.json`` beside the demo's summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
GUIDANCE = (1.0, 1.07, 1.5)


def _variants():
    for fusion in (True, False):  # with the fusion head (the default output) and the UNet alone
        yield from ((s, 1.0, fusion) for s in SCALES)
        yield from ((1.0, g, fusion) for g in GUIDANCE if g != 1.0)


def _load(folder: Path):
    from daclip_lora.data.images import read_image

    lqs = sorted((folder / "LQ").glob("*.png"))
    lq = torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in lqs])
    gt = torch.stack([torch.from_numpy(read_image(folder / "GT" / p.name)).permute(2, 0, 1) for p in lqs])
    return lq, gt


def measure(pipe, data: Path, metrics) -> dict:
    """``{split: {variant: {metric: mean}}}``; variant keys ``head|UNet alone: scale=S,guidance=G``, plus ``lq``."""
    out: dict = {}
    for split in ("val", "test"):
        root = data / split
        if not root.is_dir():
            continue
        scores: dict = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            lq, gt = _load(folder)
            candidates = {"lq": lq}
            for scale, guidance, fusion in _variants():  # interleaved: every variant on this batch, then the next
                pipe.set_lora_scale(scale)
                key = f"{'head' if fusion else 'UNet alone'}: scale={scale:g},guidance={guidance:g}"
                candidates[key] = pipe(lq, guidance_scale=guidance, fusion=fusion)
            for name, images in candidates.items():
                for m in metrics:
                    scores.setdefault(name, {}).setdefault(m.name, []).extend(
                        m(images, gt if m.spec.mode == "FR" else None).tolist())
        out[split] = {name: {k: float(np.mean(v)) for k, v in s.items()} for name, s in scores.items()}
    pipe.set_lora_scale(1.0)
    return out


def table(out: dict, metrics) -> str:
    splits = [s for s in ("val", "test") if s in out]
    names = [m.name for m in metrics]
    arrows = {m.name: "↓" if m.spec.lower_better else "↑" for m in metrics}
    lines = ["| variant | " + " | ".join(f"{n} {arrows[n]}" for n in names) + " |", "|---|" + "---|" * len(names)]
    for variant in out[splits[0]]:
        label = "LQ input" if variant == "lq" else variant.replace(",", ", ").replace("=", " ")
        cells = [" / ".join(f"{out[s][variant][n]:.2f}" for s in splits) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from daclip_lora.metrics import METRICS, create_metrics, no_downloads
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import EMBEDDED_RESTORER

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"))
    ap.add_argument("--weights", type=Path, default=EMBEDDED_RESTORER)
    ap.add_argument("--metrics", nargs="+", default=["psnr", "ssim", "piqe"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with no_downloads():
        metrics, skipped = create_metrics([METRICS[m] for m in args.metrics], skip_missing=True)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    pipe = RestorationPipeline.from_pretrained(args.weights, device="cpu", merge_lora=False)
    with torch.no_grad():
        out = measure(pipe, args.demo / "data", metrics)
    protocol = {m.name: m.protocol() for m in metrics}
    (args.demo / "fidelity.json").write_text(json.dumps({"protocol": protocol, "results": out}, indent=1))
    print(table(out, metrics))


if __name__ == "__main__":
    main()
