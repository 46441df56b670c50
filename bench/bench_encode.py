"""Controlled DA-CLIP image encoding vs a plain CLIP encode of the same batch, side by side.

The ideal ratio is about 2.0: a controlled encode runs two vision towers (controller + CLIP).

    python bench/bench_encode.py --model daclip_ViT-B-32 --batch 8
"""

import argparse
import statistics
import time

import torch

import daclip_lora


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
        t_plain = _time(plain, args.repeats)
        t_ctrl = _time(controlled, args.repeats)
    print(f"model={args.model} batch={args.batch} device={args.device} threads={torch.get_num_threads()}")
    print(f"plain CLIP encode     : {t_plain * 1e3:8.1f} ms")
    print(f"controlled encode     : {t_ctrl * 1e3:8.1f} ms")
    print(f"ratio controlled/plain: {t_ctrl / t_plain:8.2f}  (ideal ~2.0: two towers)")


if __name__ == "__main__":
    main()
