"""Ablation of the degradation-aware SD LoRA on the embedded demo's data (one run, same steps and seed).

Variants, each trained from the shipped tiny pretrained SD base with the demo's settings, on the demo's cached
training split, then evaluated on the held-out split with the same seed:

    full            one-step objective, DA-CLIP content + degradation tokens, LQ latent, LoRA rank 8 on every
                    conv/linear layer, fusion head fitted on training + calibration images (the demo's model)
    no_degra        without the degradation-embedding tokens
    no_image        without the image-content-embedding tokens
    no_lq           without the LQ latent (DA-CLIP tokens only)
    rank4, rank16   LoRA rank 4 / 16 (alpha = rank)
    no_fusion       without the fusion head (the decoded restored latent is the output)
    no_calib        the fusion head fitted on training images only (no calibration split)
    head_only       the fusion head over a LoRA trained for one step (what the head does without the LoRA)
    diffusion       the diffusion objective (half the samples noised from the LQ latent), sampled with 20 DDIM
                    steps, no fusion head; evaluated at several ``strength`` values (1.0 = from pure noise)

Usage (after ``daclip-lora demo --out runs/demo``, whose data and controller LoRA it reuses)::

    python bench/bench_ablation.py --demo runs/demo --out runs/ablation

Prints a Markdown table (mean PSNR/SSIM and the per-degradation PSNR gain over LQ) and writes
``ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

VARIANTS = {
    "full": {},
    "no_degra": {"conditioning": {"degra_context": False}},
    "no_image": {"conditioning": {"image_context": False}},
    "no_lq": {"conditioning": {"lq_latent": False}},
    "rank4": {"lora": {"rank": 4, "alpha": 4}},
    "rank16": {"lora": {"rank": 16, "alpha": 16}},
    "no_fusion": {"objective": {"fusion": False}},
    "no_calib": {"calib": False},
    "head_only": {"steps": 1},
    "diffusion": {"objective": {"objective": "diffusion", "fusion": False}, "conditioning": {"lq_start": 0.5},
                  "sampling": {"steps": 20}},
}
STRENGTHS = (1.0, 0.6, 0.4, 0.2)  # the diffusion variant's sweep


def main() -> None:
    from daclip_lora.apps.demo import restoration_options
    from daclip_lora.training.engine import Engine
    from daclip_lora.training.options import load_options
    from daclip_lora.training.tasks.restoration import RestorationTrainer, evaluate_restoration

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `daclip-lora demo --out` folder")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the demo's)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--strengths", nargs="*", type=float, default=list(STRENGTHS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)

    summary = json.loads((args.demo / "summary.json").read_text())
    distortion = sorted(summary["restoration_per_degradation"])
    daclip = {"model": "daclip_tiny", "pretrained": summary["daclip_base"], "adapter": summary["controller_lora"]}
    out = args.out.resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    data_link = out / "data"
    # reuse the demo's data through links (restoration_options reads out/data)
    for split in ("train", "val", "calib"):
        link = data_link / split
        if not link.exists() and (args.demo / "data" / split).is_dir():
            link.symlink_to((args.demo / "data" / split).resolve(), target_is_directory=True)

    rows, results = [], {}
    for name in args.variants:
        change = VARIANTS[name]
        change = dict(change, steps=change.get("steps", args.steps))
        train_yml, test_yml = restoration_options(out, f"ablation_{name}", distortion, daclip, seed=summary["seed"],
                                                  **change)
        opt = load_options(train_yml, is_train=True, root=out / "runs")
        t0 = time.perf_counter()
        Engine(opt, RestorationTrainer(opt)).fit()
        seconds = time.perf_counter() - t0
        weights = Path(opt.path.models) / "restoration"
        strengths = args.strengths if name == "diffusion" else [None]
        for strength in strengths:
            overrides = [] if strength is None else [f"sampling.strength={strength}"]
            test = load_options(test_yml, is_train=False, root=out / "runs" / f"s{strength}", overrides=overrides)
            report = evaluate_restoration(test, folder=str(weights))["val"]
            label = name if strength is None else f"{name}, strength {strength}"
            results[label] = {"report": report, "train_seconds": round(seconds, 1)}
            rows.append((label, report))
            print(f"{label}: PSNR {report['mean']['lq_psnr']:.2f} -> {report['mean']['psnr']:.2f} dB", flush=True)

    degs = [d for d in rows[0][1] if d != "mean"]
    short = {d: d.replace("-", " ").split()[0][:6] for d in degs}
    print("\n| variant | PSNR (LQ -> out) | SSIM (LQ -> out) | improved | " +
          " | ".join(short[d] for d in degs) + " |")
    print("|---|---|---|---|" + "---|" * len(degs))
    for label, report in rows:
        m = report["mean"]
        improved = sum(report[d]["psnr"] > report[d]["lq_psnr"] for d in degs)
        gains = " | ".join(f"{report[d]['psnr'] - report[d]['lq_psnr']:+.1f}" for d in degs)
        print(f"| {label} | {m['lq_psnr']:.2f} -> **{m['psnr']:.2f}** | {m['lq_ssim']:.3f} -> {m['ssim']:.3f} | "
              f"{improved}/{len(degs)} | {gains} |")
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    print(f"\nper-degradation columns: restored PSNR minus LQ PSNR (dB); details in {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
