"""Controlled DA-CLIP image encoding vs a plain CLIP encode of the same batch, side by side.

The ideal ratio is about 2.0: a controlled encode runs two vision towers (controller + CLIP).

    python bench/bench_encode.py --model daclip_ViT-B-32 --batch 8

The two encodes run interleaved (plain, controlled, plain, ...) after a warm-up each; the ratio is taken per round
and reported as median (min-max).
"""

import argparse

import torch

import daclip_lora
from _timing import fmt, fmt_ratio, interleaved  # same folder: the script's directory is on sys.path


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

    with torch.inference_mode():
        t = interleaved({"plain": lambda: model.encode_image(images),
                         "controlled": lambda: model.encode_image(images, control=True)}, args.repeats, sync)
    t_plain, t_ctrl = t["plain"], t["controlled"]
    print(f"model={args.model} batch={args.batch} device={args.device} threads={torch.get_num_threads()}; "
          f"median (min-max) of {args.repeats}, interleaved")
    print(f"plain CLIP encode     : {fmt(t_plain)} s")
    print(f"controlled encode     : {fmt(t_ctrl)} s")
    print(f"ratio controlled/plain: {fmt_ratio(t_ctrl, t_plain)} per round  (ideal ~2.0: two towers)")


if __name__ == "__main__":
    main()
