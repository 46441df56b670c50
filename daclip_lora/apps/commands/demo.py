"""``daclip-lora demo``: the embedded end-to-end demo and its table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict


def _demo_table(summary: Dict[str, Any]) -> str:
    """The demo's held-out figures, one row per split (new crops of the training photographs; new photographs)."""
    rows = [("new crops (val)", summary)]
    if summary.get("new_photographs", {}).get("psnr_lq") is not None:
        rows.append((f"new photographs ({', '.join(summary['new_photographs']['images'])})",
                     summary["new_photographs"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {'held-out split':<{width}}  degradation acc.  PSNR LQ  UNet alone  wrong DA-CLIP  with head"
             f"  improved (UNet / head)"]
    for name, r in rows:
        n = len(r["restoration_per_degradation"])
        lines.append(f"  {name:<{width}}  {r['controller_accuracy_before']:.3f} -> {r['controller_accuracy_after']:.3f}"
                     f"    {r['psnr_lq']:6.2f}  {r['psnr_unet']:10.2f}  {r['psnr_unet_wrong_embedding']:13.2f}"
                     f"  {r['psnr_restored']:9.2f}  {r['unet_degradations_improved']}/{n} / "
                     f"{r['degradations_improved']}/{n}")
    lines.append(f"  (PSNR in dB; degradation accuracy of DA-CLIP before -> after the controller LoRA, chance "
                 f"{summary['chance']:.3f})")
    quality = summary.get("quality")
    if quality:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in quality["mean"].items() if k != "n")
        lines.append(f"  quality of the restored {quality['split']} split: {scores}"
                     + (f"; skipped (no weights here or no pyiqa): {', '.join(quality['skipped'])}"
                        if quality["skipped"] else ""))
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    summary = run_demo(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"embedded demo ({summary['preset']}) finished in {summary['seconds']:.0f} s -> {args.out}")
    print(f"  dataset            {summary['dataset']}")
    print(f"  DA-CLIP base       {summary['daclip_base']}")
    print(f"  controller LoRA    {summary['controller_lora']} ({summary['controller_trainable']:,} trainable, "
          f"{summary['controller_trainable_percent']:.2f}% of the controller)")
    print(f"  SD base (tiny, pretrained, shipped) {summary['sd_base']}")
    print(f"  SD LoRA            {summary['sd_lora']}")
    print(_demo_table(summary))
    print(f"  restored images    {summary['results']} (overview: {summary['overview']})")
    print(f"  summary            {Path(args.out) / 'summary.json'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the embedded end-to-end demo on CPU (no downloads)",
                       description="Synthetic data from scikit-image photographs, the shipped tiny pretrained "
                                   "DA-CLIP, controller-LoRA training and evaluation, the shipped tiny pretrained SD, "
                                   "degradation-aware "
                                   "SD LoRA training and restoration of the held-out split; everything under --out.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--preset", choices=["full", "quick"], default="full",
                   help="'full' (a few CPU minutes) or 'quick' (seconds; a smoke test, numbers mean nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_demo)
