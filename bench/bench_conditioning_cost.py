"""What the UNet's DA-CLIP paths cost: one-step UNet call and training step, side by side, interleaved, in one run.

An SD 1.5-sized UNet (random weights, ``UNET_CONFIGS["sd15"]``) at ``--size`` px (latent ``size / 8``), batch 1,
LoRA rank 8 on the attention projections (the default targets), fp32 on the chosen device:

    plain, merged      LoRA baked into the weights, ``conv_in`` fused (the fastest plain-LoRA inference)
    plain              the same LoRA unmerged
    modulated          ``modulated_lora`` (B · M(e) · A, cannot be merged)
    all paths          ``modulated_lora`` + ``time_embedding`` + ``output_norm`` (the demo's UNet)

Inference: one ``RestorationUNet.denoise`` call (the one-step restoration's UNet work; VAE and DA-CLIP are the same
for every variant). Training: forward + backward of the one-step loss. Median (min-max) of ``--repeats`` rounds,
the variants interleaved within each round; ratios taken per round.

Usage::

    python bench/bench_conditioning_cost.py --size 256 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Dict

import torch

from _timing import fmt, fmt_ratio, interleaved  # same folder: the script's directory is on sys.path

VARIANTS: Dict[str, Dict[str, Any]] = {
    "plain, merged": {"merge": True},
    "plain": {},
    "modulated": {"modulated_lora": True},
    "all paths": {"modulated_lora": True, "time_embedding": True, "output_norm": True},
}


def build(variant: Dict[str, Any], device: str, embed_dim: int = 512):
    from diffusers import UNet2DConditionModel

    from daclip_lora._utils.lora import unload_lora
    from daclip_lora.restoration.lora import add_restoration_lora
    from daclip_lora.restoration.conditioning import conditioning_paths
    from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
    from daclip_lora.restoration.sd_configs import UNET_CONFIGS

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIGS["sd15"])
    paths = {k: v for k, v in variant.items() if k != "merge"}
    config = RestorationConfig(base="sd15", daclip_model="daclip_ViT-B-32", embed_dim=embed_dim,
                               cross_attention_dim=768, paths=conditioning_paths(num_tokens=4, **paths),
                               lora={"rank": 8, "alpha": 8}, objective="one_step")
    model = RestorationUNet(unet, config)
    add_restoration_lora(model, config.lora)
    with torch.no_grad():  # non-zero LoRA B and zero-initialised heads, so every path does real work
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.01)
    if variant.get("merge"):
        unload_lora(model.unet, merge=True)
        model.merge_paths()
    return model.to(device)


def inputs(size: int, device: str, embed_dim: int = 512) -> Dict[str, Any]:
    from daclip_lora.restoration.conditioning import Conditions

    g = torch.Generator().manual_seed(0)
    h = size // 8
    r = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    return dict(noisy=r(1, 4, h, h), timesteps=torch.tensor([50], device=device), text_hidden=r(1, 77, 768),
                conditions=Conditions(image=r(1, embed_dim), degradation=r(1, embed_dim), lq_latent=r(1, 4, h, h)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the timings here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = inputs(args.size, args.device)
    models = {name: build(v, args.device) for name, v in VARIANTS.items()}

    def forward(model):
        with torch.no_grad():
            model(**x)

    def step(model):
        model(**x).float().pow(2).mean().backward()

    # every variant's call, then its training step (not for the merged model), once per round
    fns: Dict[Any, Callable[[], Any]] = {}
    for name, model in models.items():
        fns[("infer", name)] = lambda m=model: forward(m)
        if name != "plain, merged":
            fns[("train", name)] = lambda m=model: step(m)
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    times = interleaved(fns, args.repeats, sync)
    infer = {name: times[("infer", name)] for name in models}
    train = {name: t for (kind, name), t in times.items() if kind == "train"}
    print(f"SD 1.5-sized UNet, {args.size} px, batch 1, {args.device}, {args.threads} threads; seconds: median "
          f"(min-max) of {args.repeats} interleaved rounds, ratios per round\n\n"
          "| variant | one-step UNet call | vs merged plain | training step | vs plain |\n|---|---|---|---|---|")
    out = {}
    for name in models:
        t = train.get(name)
        out[name] = {"inference_s": infer[name], "train_step_s": t}
        tt = f"{fmt(t)} | {fmt_ratio(t, train['plain'])}" if t is not None else "- | -"
        print(f"| {name} | {fmt(infer[name])} | {fmt_ratio(infer[name], infer['plain, merged'])} | {tt} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "device": args.device, "threads": args.threads, "timings": out}, f, indent=2)


if __name__ == "__main__":
    main()
