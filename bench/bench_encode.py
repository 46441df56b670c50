"""Controlled DA-CLIP image encoding vs a plain CLIP encode of the same batch, side by side.

The ideal ratio is about 2.0: a controlled encode runs two vision towers (controller + CLIP).

    python bench/bench_encode.py --model daclip_ViT-B-32 --batch 8

The two encodes run interleaved (plain, controlled, plain, ...) after a warm-up each; the ratio is taken per round
and reported as median (min-max).
"""

import argparse
import statistics
import time

import torch

import daclip_lora
from bench_pipeline import _fmt  # same folder: the script's directory is on sys.path


def _interleaved(fns, repeats: int):
    """Each function once as a warm-up, then ``repeats`` rounds A B A B ...: per-function lists of seconds."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="daclip_ViT-B-32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = daclip_lora.create_model(args.model, device=args.device)
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain():
        model.encode_image(images)
        sync()

    def controlled():
        model.encode_image(images, control=True)
        sync()

    with torch.inference_mode():
        t_plain, t_ctrl = _interleaved([plain, controlled], args.repeats)
    ratios = [c / p for c, p in zip(t_ctrl, t_plain)]  # per round: a background burst hits both of a pair
    print(f"model={args.model} batch={args.batch} device={args.device} threads={torch.get_num_threads()}; "
          f"median (min-max) of {args.repeats}, interleaved")
    print(f"plain CLIP encode     : {_fmt(t_plain)} s")
    print(f"controlled encode     : {_fmt(t_ctrl)} s")
    print(f"ratio controlled/plain: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})  "
          f"(ideal ~2.0: two towers)")


if __name__ == "__main__":
    main()
