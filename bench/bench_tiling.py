"""Tiled vs whole restoration: peak memory and time against the image side (CPU, shipped tiny SD base).

Each measurement runs in a fresh subprocess (so peak RSS is that run's own): load the pipeline, note the RSS,
restore one random ``side x side`` image with ``--steps`` DDIM steps, report the time and the peak RSS growth
over the loaded pipeline. Runs are interleaved: ``--repeats`` rounds, each one run of every (side, mode) pair, so a
background burst shows up as spread rather than as a ratio; time and peak growth are medians (min-max).
``whole`` restores in one piece (skipped above ``--max-whole``: its self-attention alone grows with the square of
the area); ``tiled`` uses ``--tile`` px tiles with a quarter overlap.

    python bench/bench_tiling.py --sides 256 512 1024 2048 --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _timing import fmt, fmt_ratio  # same folder: the script's directory is on sys.path


def _child(side: int, mode: str, steps: int, tile: int, threads: int) -> None:
    import torch

    from daclip_lora.restoration.backbone import SDBackbone
    from daclip_lora.restoration.lora import add_unet_lora
    from daclip_lora.restoration.conditioning import conditioning_paths
    from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
    from daclip_lora.clip.factory import load_daclip
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import embedded_sd_base

    torch.set_num_threads(threads)
    base = embedded_sd_base()
    backbone = SDBackbone.load(base)
    cfg = RestorationConfig(base=str(base), daclip_model="daclip_tiny", embed_dim=64, cross_attention_dim=32,
                            paths=conditioning_paths(num_tokens=2), lora={"rank": 8, "alpha": 8})
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
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1], args.steps, args.tile, args.threads)
        return
    cells = {(side, mode): [] for side in args.sides for mode in ("whole", "tiled")
             if not (mode == "whole" and side > args.max_whole)}
    for _ in range(args.repeats):
        for side, mode in cells:
            run = subprocess.run([sys.executable, __file__, "--child", str(side), mode, "--steps", str(args.steps),
                                  "--tile", str(args.tile), "--threads", str(args.threads)],
                                 capture_output=True, text=True)
            if run.returncode:
                print(run.stderr[-2000:], file=sys.stderr)
                continue
            cells[side, mode].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(cells[side, mode][-1], flush=True)
    _report(cells, args)


def _report(cells, args) -> None:
    print(f"\nmedian (min-max) of {args.repeats} interleaved runs, each in a fresh process; ratios per round")
    print(f"| side | whole: time (s) | whole: peak growth (MB) | tiled ({args.tile} px): time (s) | "
          "tiled: peak growth (MB) | time tiled / whole | memory tiled / whole |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        w, t = cells.get((side, "whole"), []), cells.get((side, "tiled"), [])
        row = []
        for runs in (w, t):
            row += ([fmt([r["seconds"] for r in runs], digits=1), fmt([r["peak_growth_mb"] for r in runs], digits=0)]
                    if runs else ["n/a", "n/a"])
        if w and len(w) == len(t):
            row += [fmt_ratio([r["seconds"] for r in t], [r["seconds"] for r in w]),
                    fmt_ratio([r["peak_growth_mb"] for r in t], [max(r["peak_growth_mb"], 1) for r in w])]
        else:
            row += ["-", "-"]
        print(f"| {side} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
