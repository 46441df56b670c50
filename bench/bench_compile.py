"""Eager against compiled (``pipe.compile()``, ``restore --compile``) one-step restoration on CPU.

The shipped tiny restorer (the model ``restore`` and the web app start with), one image per call, at each
``--sizes``; eager and compiled pipelines are two copies of the same model, called interleaved (E C E C ...)
after their warm-up (the compiled one's warm-up is its compilation, reported apart). Every figure is the median
of ``--repeats`` with its min-max range; the speed-up is the ratio of medians with the range of per-pair ratios.

    python bench/bench_compile.py                       # CPU, 2 threads, 256 and 512 px
    python bench/bench_compile.py --device cuda --sizes 512 1024
"""

from __future__ import annotations

import argparse
import statistics
import time
import torch

from bench_pipeline import _fmt, _sync  # same folder: the script's directory is on sys.path


def _timed(pipe, lq) -> float:
    _sync(lq.device)
    t0 = time.perf_counter()
    pipe(lq)
    _sync(lq.device)
    return time.perf_counter() - t0


def main() -> None:
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import embedded_restorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    eager = RestorationPipeline.from_pretrained(embedded_restorer(), device=device)
    compiled = RestorationPipeline.from_pretrained(embedded_restorer(), device=device).compile()
    print(f"device {device}, {args.threads} threads, tiny restorer, batch 1, tile_size 0 (whole image); seconds "
          f"per call, median (min-max) of {args.repeats}, interleaved\n")
    print("| size | eager | compiled | speed-up | compilation (first call) | max abs difference |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        ref = eager(lq, tile_size=0)
        first = _timed(lambda x: compiled(x, tile_size=0), lq)
        diff = (compiled(lq, tile_size=0) - ref).abs().max().item()
        times = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            times["eager"].append(_timed(lambda x: eager(x, tile_size=0), lq))
            times["compiled"].append(_timed(lambda x: compiled(x, tile_size=0), lq))
        ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
        speed = statistics.median(times["eager"]) / statistics.median(times["compiled"])
        print(f"| {size} px | {_fmt(times['eager'])} | {_fmt(times['compiled'])} | {speed:.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {first:.1f} s | {diff:.1e} |")


if __name__ == "__main__":
    main()
