"""Ablation of the UNet's DA-CLIP conditioning on the embedded demo's data: one run, several seeds, side by side.

Every variant is trained from the shipped tiny pretrained SD base with the demo's settings (one-step, per-image
RMSE, LoRA rank 8 on every conv/linear layer, 250 steps of batch 16, lr 3e-3: ``DEMO_PRESETS['full']``) on the
demo's cached training split, and
evaluated on its two held-out splits (``val``: new crops of the training photographs; ``test``: photographs no
model trained on) **without the fusion head** (the UNet alone), then again with each image given the DA-CLIP
embeddings of an image of another degradation (``wrong emb.``):

    no_daclip       no DA-CLIP conditioning at all (LQ latent only)
    tokens          DA-CLIP content + degradation tokens in the text context only (the earlier default)
    time_embedding  only the degradation embedding added to the time embedding
    modulated_lora  only the degradation-modulated LoRA (B · M(e) · A)
    output_norm     only the degradation-aware output norm
    all             tokens + every path (the demo's UNet)
    all+head        the demo's model: ``all`` with the fusion head fitted after (reported with the head)

Usage (after ``daclip-lora demo --out runs/demo``, whose data and controller LoRA it reuses)::

    python bench/bench_ablation.py --demo runs/demo --out runs/ablation --seeds 0 1 2

Prints a Markdown table (mean over seeds, with the range) and writes ``ablation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

_OFF = {"image_context": False, "degra_context": False, "time_embedding": False, "modulated_lora": False,
        "output_norm": False}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "no_daclip": {"conditioning": _OFF},
    "tokens": {"conditioning": {**_OFF, "image_context": True, "degra_context": True}},
    "time_embedding": {"conditioning": {**_OFF, "time_embedding": True}},
    "modulated_lora": {"conditioning": {**_OFF, "modulated_lora": True}},
    "output_norm": {"conditioning": {**_OFF, "output_norm": True}},
    "all": {},
    "all+head": {"head": True},
}


def _link_demo_data(demo: Path, out: Path) -> None:
    """restoration_options reads ``out/data``: link the demo's splits there."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "calib", "test"):
        link = out / "data" / split
        if not link.exists() and (demo / "data" / split).is_dir():
            link.symlink_to((demo / "data" / split).resolve(), target_is_directory=True)


def run_variant(name: str, seed: int, out: Path, distortion, daclip) -> Dict[str, Any]:
    from daclip_lora.apps.demo import restoration_options
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.training.engine import Engine
    from daclip_lora.training.options import load_options
    from daclip_lora.training.tasks.restoration import RestorationTrainer, restoration_dataset
    from daclip_lora.training.tasks.restoration_ablation import unet_alone_report

    change = dict(VARIANTS[name])
    head = change.pop("head", False)
    train_yml, _ = restoration_options(out, f"ablation_{name.replace('+', '_')}_s{seed}", distortion, daclip,
                                       seed=seed, objective={"fusion": head}, calib=head, **change)
    opt = load_options(train_yml, is_train=True, root=out / "runs", overrides=["train.val_freq=0"])
    t0 = time.perf_counter()
    Engine(opt, RestorationTrainer(opt)).fit()
    seconds = time.perf_counter() - t0
    pipe = RestorationPipeline.from_pretrained(Path(opt.path.models) / "restoration", device="cpu")
    val = restoration_dataset(opt.datasets["val"], distortion, train=False, clip_size=pipe.daclip.image_size)
    report = unet_alone_report(pipe, val, fusion=head)
    test_root = out / "data" / "test"
    if test_root.is_dir():
        block = dataclasses.replace(opt.datasets["val"], dataroot=str(test_root))
        test = unet_alone_report(pipe, restoration_dataset(block, distortion, train=False,
                                                           clip_size=pipe.daclip.image_size), fusion=head)
        report["test"] = {k: test[k] for k in ("lq", "unet", "unet_wrong_embedding", "unet_degradations_improved")}
    return {**report, "train_seconds": round(seconds, 1)}


def _table(results: Dict[str, Dict[int, Dict[str, Any]]]) -> str:
    def stat(values):
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.2f} ({v.min():.2f}-{v.max():.2f})" if len(v) > 1 else f"{v.mean():.2f}"

    lines = ["| variant | PSNR LQ | PSNR out (seeds: mean (min-max)) | improved (of 10) | wrong emb. | drop | "
             "new photographs: LQ / out / improved |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        r = list(runs.values())
        drop = [x["unet"] - x["unet_wrong_embedding"] for x in r]
        new = (f"{r[0]['test']['lq']:.2f} / {stat([x['test']['unet'] for x in r])} / "
               f"{'/'.join(str(x['test']['unet_degradations_improved']) for x in r)}" if "test" in r[0] else "")
        lines.append(f"| {name} | {r[0]['lq']:.2f} | {stat([x['unet'] for x in r])} | "
                     f"{'/'.join(str(x['unet_degradations_improved']) for x in r)} | "
                     f"{stat([x['unet_wrong_embedding'] for x in r])} | {stat(drop)} | {new} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `daclip-lora demo --out` folder")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    summary = json.loads((args.demo / "summary.json").read_text())
    distortion = sorted(summary["restoration_per_degradation"])
    daclip = {"model": "daclip_tiny", "pretrained": summary["daclip_base"], "adapter": summary["controller_lora"]}
    out = args.out.resolve()
    _link_demo_data(args.demo, out)
    results: Dict[str, Dict[int, Dict[str, Any]]] = {name: {} for name in args.variants}
    for seed in args.seeds:  # seeds outermost: every variant sees the machine in the same state per seed
        for name in args.variants:
            r = run_variant(name, seed, out, distortion, daclip)
            results[name][seed] = r
            print(f"seed {seed} {name}: LQ {r['lq']:.2f} -> {r['unet']:.2f} dB, {r['unet_degradations_improved']}/10,"
                  f" wrong embedding {r['unet_wrong_embedding']:.2f} dB ({r['train_seconds']:.0f} s)", flush=True)
            (out / "ablation.json").write_text(json.dumps(results, indent=2))
    print("\n" + _table(results))
    print("\n'out' is the UNet alone (no fusion head) except for all+head; 'wrong emb.': each image given the "
          f"DA-CLIP embeddings of an image of another degradation; details in {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
