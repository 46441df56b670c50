"""The restoration pipeline's time by stage, at SD 1.5 size (random weights, real architectures).

Stages: DA-CLIP (the LQ's embeddings), prompt (text encoder; cached per prompt), VAE encode, UNet (every call),
VAE decode (the restored latent, and the LQ latent the fusion head blends with), fusion head. The whole call is
compared with its unavoidable parts (VAE encode + UNet + one VAE decode). Variants run interleaved (A B A B ...),
after one warm-up each; every figure is the median of ``--repeats`` with its min-max range.

    python bench/bench_pipeline.py                              # CPU, 256 px, batch 1 and 8
    python bench/bench_pipeline.py --device cuda --resolution 512 --precision bf16

Variants: ``one-step`` (today's pipeline), ``one-step, before`` (prompt re-encoded every call: the pipeline
before issue 26), ``one-step, decodes batched`` (``pipe.batch_decodes``: the fusion head's two decodes in one
call), ``one-step, one decode`` (a head built with ``decoded_lq=False``: the LQ image in place of its decode)
and ``4-step`` (a diffusion-objective model, DDIM).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Callable, Dict, List

import torch

from _timing import fmt  # same folder: the script's directory is on sys.path

STAGES = ("daclip", "prompt", "vae_encode", "unet", "vae_decode", "fusion_head")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Wraps the pipeline's stage functions and adds up their wall time per call."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, defaultdict(float)

    def wrap(self, obj, name: str, stage: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.seconds[stage] += time.perf_counter() - t0
            return out
        setattr(obj, name, timed)


def build(device, resolution: int, objective: str, model_name: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from daclip_lora.clip.factory import load_daclip
    from daclip_lora.restoration.backbone import SDBackbone, SDComponents
    from daclip_lora.restoration.lora import add_unet_lora
    from daclip_lora.restoration.conditioning import conditioning_paths
    from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.restoration.sd_configs import SD_SCHEDULER, UNET_CONFIGS, VAE_CONFIGS
    from daclip_lora.tiny.sd import build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**dict(UNET_CONFIGS["sd15"], sample_size=resolution // 8))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768, max_position_embeddings=77))
    comps = SDComponents(tokenizer=build_clip_tokenizer(), text_encoder=text, vae=AutoencoderKL(**VAE_CONFIGS["sd"]),
                         unet=unet, scheduler=DDPMScheduler(**SD_SCHEDULER))
    daclip = load_daclip(model_name).eval().requires_grad_(False)
    one_step = objective == "one_step"
    cfg = RestorationConfig(base="random-sd15", daclip_model=model_name,
                            embed_dim=int(daclip.clip.text_projection.shape[1]), cross_attention_dim=768,
                            paths=conditioning_paths(num_tokens=4, time_embedding=True, output_norm=True),
                            lora={"rank": 8, "alpha": 8}, objective=objective, fusion=one_step)
    model = RestorationUNet(unet, cfg)
    add_unet_lora(model.unet, cfg.lora)
    if model.fusion is not None:
        model.fusion.fitted = True
    pipe = RestorationPipeline(SDBackbone(comps), model.eval(), daclip)
    pipe.merge_lora()
    return pipe.to(device)


def timed_call(pipe, clock: StageClock, lq, steps: int, before: bool, batch_decodes: bool = False,
               decoded_lq: bool = True) -> Dict[str, float]:
    pipe.batch_decodes = batch_decodes
    if pipe.model.fusion is not None:  # a Python flag on the head: the same weights serve both head variants
        pipe.model.fusion.uses_decoded_lq = decoded_lq
    if before:
        pipe._prompt_cache.clear()
    clock.seconds.clear()
    _sync(lq.device)
    t0 = time.perf_counter()
    pipe(lq, steps=steps, scheduler="ddim")
    _sync(lq.device)
    return {"total": time.perf_counter() - t0, **{s: clock.seconds.get(s, 0.0) for s in STAGES},
            "decodes": 2 if pipe.model.fusion is not None and decoded_lq else 1}  # latents decoded per image


def instrument(pipe, device) -> StageClock:
    clock = StageClock(device)
    clock.wrap(pipe, "daclip_embeddings", "daclip")
    clock.wrap(pipe.backbone, "encode_prompt", "prompt")
    clock.wrap(pipe, "encode_latents", "vae_encode")
    clock.wrap(pipe.model, "denoise", "unet")
    clock.wrap(pipe, "decode_latents", "vae_decode")
    if pipe.model.fusion is not None:
        clock.wrap(pipe.model.fusion, "forward", "fusion_head")
    return clock


def main() -> None:
    from daclip_lora.restoration.pipeline import PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="daclip_ViT-B-32", help="DA-CLIP model (random weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                    help="run only these variants (e.g. 'one-step' '4-step'; default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipes = {"one_step": build(device, args.resolution, "one_step", args.model),
             "diffusion": build(device, args.resolution, "diffusion", args.model)}
    for p in pipes.values():
        p.precision = args.precision
    clocks = {k: instrument(p, device) for k, p in pipes.items()}
    variants: Dict[str, Callable] = {
        "one-step": lambda lq: timed_call(pipes["one_step"], clocks["one_step"], lq, 1, before=False),
        "one-step, before": lambda lq: timed_call(pipes["one_step"], clocks["one_step"], lq, 1, before=True),
        "one-step, decodes batched": lambda lq: timed_call(pipes["one_step"], clocks["one_step"], lq, 1,
                                                           before=False, batch_decodes=True),
        "one-step, one decode": lambda lq: timed_call(pipes["one_step"], clocks["one_step"], lq, 1, before=False,
                                                     decoded_lq=False),
        "4-step": lambda lq: timed_call(pipes["diffusion"], clocks["diffusion"], lq, 4, before=False),
    }
    unknown = set(args.variants or []) - set(variants)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(variants)}")
    variants = {k: v for k, v in variants.items() if not args.variants or k in args.variants}
    print(f"device {device}, {args.precision}, {args.resolution} px, SD 1.5-sized UNet + SD VAE + {args.model} "
          f"(random weights), {args.threads} threads; seconds per call: median (min-max) of {args.repeats}")
    for batch in args.batches:
        lq = torch.rand(batch, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
        lq = lq.to(device)
        runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in variants}
        with torch.no_grad():
            for fn in variants.values():  # warm-up
                fn(lq)
            for _ in range(args.repeats):
                for name, fn in variants.items():  # interleaved
                    runs[name].append(fn(lq))
        _report(batch, runs)


def _report(batch: int, runs: Dict[str, List[Dict[str, float]]]) -> None:
    print(f"\nbatch {batch}\n| variant | " + " | ".join(("total", *STAGES)) + " | images/s | total / unavoidable |")
    print("|---|" + "---|" * (len(STAGES) + 3))
    for name, rs in runs.items():
        cells = [fmt([r[k] for r in rs]) for k in ("total", *STAGES)]
        unavoidable = [r["vae_encode"] + r["unet"] + r["vae_decode"] / r["decodes"] for r in rs]
        ratio = [r["total"] / u for r, u in zip(rs, unavoidable)]
        ips = [batch / r["total"] for r in rs]
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(ips):.2f} | "
              f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")
    print("unavoidable = VAE encode + UNet + one VAE decode (the head's second decode is not counted)")


if __name__ == "__main__":
    main()
