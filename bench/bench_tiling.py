"""Tiled vs whole restoration: peak memory and time against the image side (CPU, shipped tiny SD base).

Each measurement runs in a fresh subprocess (so peak RSS is that run's own): load the pipeline, note the RSS,
restore one random ``side x side`` image with ``--steps`` DDIM steps, report the time and the peak RSS growth
over the loaded pipeline. ``whole`` restores in one piece (skipped above ``--max-whole``: its self-attention
alone grows with the square of the area); ``tiled`` uses ``--tile`` px tiles with a quarter overlap.

    python bench/bench_tiling.py --sides 256 512 1024 2048 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(side: int, mode: str, steps: int, tile: int, threads: int) -> None:
    import torch

    from daclip_lora.restoration.backbone import SDBackbone
    from daclip_lora.restoration.lora import add_unet_lora
    from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
    from daclip_lora.clip.factory import load_daclip
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import embedded_sd_base

    torch.set_num_threads(threads)
    base = embedded_sd_base()
    backbone = SDBackbone.load(base)
    cfg = RestorationConfig(base=str(base), daclip_model="daclip_tiny", embed_dim=64, cross_attention_dim=32,
                            num_tokens=2, lora={"rank": 8, "alpha": 8})
    model = RestorationUNet(backbone.unet, cfg)
    add_unet_lora(model.unet, cfg.lora)
    pipe = RestorationPipeline(backbone, model, load_daclip("daclip_tiny").eval())
    pipe.merge_lora()
    lq = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    pipe(torch.rand(1, 3, 64, 64), steps=1)  # warm-up (allocator, kernels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = pipe(lq, steps=steps, tile_size=tile if mode == "tiled" else 0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == lq.shape and torch.isfinite(out).all()
    print(json.dumps({"side": side, "mode": mode, "seconds": round(seconds, 2),
                      "peak_growth_mb": round((peak - before) / 1024, 1), "peak_rss_mb": round(peak / 1024, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", nargs="+", type=int, default=[256, 512, 1024, 2048])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tile", type=int, default=128, help="tile side in pixels (default 128)")
    ap.add_argument("--max-whole", type=int, default=1024, help="largest side restored whole")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1], args.steps, args.tile, args.threads)
        return
    rows = []
    for side in args.sides:
        for mode in ("whole", "tiled"):
            if mode == "whole" and side > args.max_whole:
                rows.append({"side": side, "mode": mode, "seconds": None, "peak_growth_mb": None})
                continue
            run = subprocess.run([sys.executable, __file__, "--child", str(side), mode, "--steps", str(args.steps),
                                  "--tile", str(args.tile), "--threads", str(args.threads)],
                                 capture_output=True, text=True)
            if run.returncode:
                print(run.stderr[-2000:], file=sys.stderr)
                rows.append({"side": side, "mode": mode, "seconds": None, "peak_growth_mb": None, "failed": True})
                continue
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\n| side | whole: time, peak growth | tiled ({args.tile} px): time, peak growth | memory tiled / whole |")
    print("|---|---|---|---|")
    for side in args.sides:
        w = next(r for r in rows if r["side"] == side and r["mode"] == "whole")
        t = next(r for r in rows if r["side"] == side and r["mode"] == "tiled")
        fmt = lambda r: "n/a" if r["seconds"] is None else f"{r['seconds']:.1f} s, {r['peak_growth_mb']:.0f} MB"  # noqa
        ratio = f"{t['peak_growth_mb'] / max(w['peak_growth_mb'], 1):.2f}x" if w["seconds"] and t["seconds"] else "-"
        print(f"| {side} | {fmt(w)} | {fmt(t)} | {ratio} |")


if __name__ == "__main__":
    main()
