"""Controller-LoRA training vs full controller training: time per step and peak memory, side by side.

Same model config, batch and seed for both variants: forward (DaCLIP.forward with captions), DA-CLIP loss,
backward, AdamW step. Time: both models in this process, their steps interleaved (full, LoRA, full, ...) after
one warm-up step each; median (min-max) of ``--steps`` rounds and the per-round ratio. Peak memory: each variant
in its own subprocess (so the peak RSS or CUDA peak is its own). Also prints the trainable-parameter counts of
daclip_ViT-B-32 / -L-14 at rank 8, computed on the meta device.

    python bench/bench_controller.py                       # tiny config, CPU
    python bench/bench_controller.py --model daclip_ViT-B-32 --batch 8 --steps 5
"""

import argparse
import json
import resource
import subprocess
import sys

import torch

from _timing import fmt, fmt_ratio, interleaved  # same folder: the script's directory is on sys.path

VARIANTS = ("full", "lora")


def build_step(variant: str, model_name: str, batch: int, device: str):
    """``(step, trainable)``: one training step of ``variant`` as a callable, and its trainable count."""
    import daclip_lora
    from daclip_lora.clip.lora import add_controller_lora
    from daclip_lora.clip.loss import daclip_loss
    from daclip_lora.training.options import LoraOptions

    torch.manual_seed(0)
    model = daclip_lora.create_model(model_name, device=device).train()
    if variant == "lora":
        add_controller_lora(model, LoraOptions(rank=8))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    tok = daclip_lora.get_tokenizer(model_name)
    images = torch.randn(batch, 3, 224, 224, device=device)
    text = torch.cat([tok(["a photo"] * batch), tok(["noisy"] * batch)], dim=-1).to(device)

    def step() -> None:
        loss = daclip_loss(model(images, text), "reference")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in params)


def peak_child(variant: str, model_name: str, batch: int, device: str) -> None:
    step, _ = build_step(variant, model_name, batch, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"variant": variant, "peak_mb": peak / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="daclip_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each variant per round)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        return peak_child(args.peak_child, args.model, args.batch, args.device)

    peaks = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--peak-child", variant, "--model", args.model, "--batch",
                              str(args.batch), "--device", args.device],
                             check=True, capture_output=True, text=True).stdout
        peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    built = {v: build_step(v, args.model, args.batch, args.device) for v in VARIANTS}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    times = interleaved({v: built[v][0] for v in VARIANTS}, args.steps, sync)
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak process RSS"
    print(f"model={args.model} batch={args.batch} device={args.device} threads={torch.get_num_threads()}; "
          f"s/step: median (min-max) of {args.steps} interleaved rounds")
    print(f"| variant | trainable | s/step | {memory} (MB, own process) |\n|---|---|---|---|")
    for v in VARIANTS:
        print(f"| {v} | {built[v][1]:,} | {fmt(times[v])} | {peaks[v]:.0f} |")
    print(f"lora / full: time {fmt_ratio(times['lora'], times['full'])} per round, "
          f"memory {peaks['lora'] / peaks['full']:.2f}x, trainable {built['lora'][1] / built['full'][1]:.4f}")

    import daclip_lora
    from daclip_lora.clip.lora import add_controller_lora
    from daclip_lora.training.options import LoraOptions

    for name in ("daclip_ViT-B-32", "daclip_ViT-L-14"):
        report = add_controller_lora(daclip_lora.create_model(name, device="meta"), LoraOptions(rank=8))
        print(f"{name} rank 8: {report}")


if __name__ == "__main__":
    main()
