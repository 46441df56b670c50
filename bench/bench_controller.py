"""Controller-LoRA training vs full controller training: time per step and peak memory, side by side.

Each variant runs in its own subprocess (so peak memory is its own) on the same model config, batch
and seed: forward (DaCLIP.forward with captions), DA-CLIP loss, backward, AdamW step. Also prints the
trainable-parameter counts of daclip_ViT-B-32 / -L-14 at rank 8, computed on the meta device.

    python bench/bench_controller.py                       # tiny config, CPU
    python bench/bench_controller.py --model daclip_ViT-B-32 --batch 16 --steps 10
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def run_variant(variant: str, model_name: str, batch: int, steps: int, device: str) -> dict:
    import daclip_lora
    from daclip_lora.clip.lora import add_controller_lora
    from daclip_lora.training.options import LoraOptions
    from daclip_lora.clip.loss import daclip_loss

    torch.manual_seed(0)
    model = daclip_lora.create_model(model_name, device=device).train()
    if variant == "lora":
        add_controller_lora(model, LoraOptions(rank=8))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    tok = daclip_lora.get_tokenizer(model_name)
    images = torch.randn(batch, 3, 224, 224, device=device)
    text = torch.cat([tok(["a photo"] * batch), tok(["noisy"] * batch)], dim=-1).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = daclip_loss(model(images, text), "reference")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "ms_per_step": 1e3 * statistics.median(times), "peak_mb": peak / 2 ** 20,
            "trainable": sum(p.numel() for p in params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="daclip_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.batch, args.steps, args.device)))
        return

    results = {}
    for variant in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--model", args.model, "--batch",
                              str(args.batch), "--steps", str(args.steps), "--device", args.device],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak process RSS"
    print(f"model={args.model} batch={args.batch} steps={args.steps} device={args.device}")
    print(f"{'variant':<8} {'trainable':>12} {'ms/step':>9} {memory + ' (MB)':>24}")
    for r in (full, lora):
        print(f"{r['variant']:<8} {r['trainable']:>12,} {r['ms_per_step']:>9.1f} {r['peak_mb']:>24.0f}")
    print(f"ratio lora/full: time {lora['ms_per_step'] / full['ms_per_step']:.2f}, "
          f"memory {lora['peak_mb'] / full['peak_mb']:.2f}, trainable {lora['trainable'] / full['trainable']:.4f}")

    import daclip_lora
    from daclip_lora.clip.lora import add_controller_lora
    from daclip_lora.training.options import LoraOptions

    for name in ("daclip_ViT-B-32", "daclip_ViT-L-14"):
        report = add_controller_lora(daclip_lora.create_model(name, device="meta"), LoraOptions(rank=8))
        print(f"{name} rank 8: {report}")


if __name__ == "__main__":
    main()
