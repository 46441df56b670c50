"""``daclip-lora make-tiny-base``: the shipped tiny bases and restorer, re-made from their recipes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_make_tiny_base(args: argparse.Namespace) -> int:
    from ..demo import train_tiny_restorer
    from ...tiny.recipes import train_tiny_daclip, train_tiny_sd

    if args.restorer and args.daclip:
        raise ValueError("make-tiny-base: pass --restorer or --daclip, not both (they make different folders)")
    if args.daclip:
        record = train_tiny_daclip(args.out, seed=args.seed, steps=args.daclip_steps)
        print(f"tiny pretrained DA-CLIP base -> {args.out} in {record['seconds']['total']:.0f} s: held-out probe "
              f"accuracy {record['held_out_probe_accuracy']['overall']:.3f} on new crops, "
              f"{record['new_photographs_probe_accuracy']['overall']:.3f} on new photographs; zero-shot "
              f"{record['held_out_zero_shot_accuracy']['overall']:.3f} (recipe.json has the details)")
        return 0
    if args.restorer:
        record = train_tiny_restorer(args.out, seed=args.seed)
        demo = record["demo"]
        print(f"tiny restorer -> {args.out}: degradation accuracy {demo['controller_accuracy_after']:.3f}, "
              f"held-out PSNR {demo['psnr_lq']:.2f} (LQ) -> {demo['psnr_restored']:.2f} dB (recipe.json has the "
              f"details)")
        return 0

    record = train_tiny_sd(args.out, seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                           batch=args.batch)
    print(f"tiny pretrained SD base -> {args.out} in {record['seconds']:.0f} s: VAE held-out reconstruction PSNR "
          f"{record['vae']['held_out_reconstruction_psnr_db']:.2f} dB, UNet held-out noise MSE "
          f"{record['unet']['held_out_noise_mse']} (recipe.json has the details)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("make-tiny-base", help="re-create the tiny pretrained bases that ship with the package",
                       description="Train the tiny SD base (VAE, then UNet denoiser) from scikit-image photographs, "
                                   "deterministically, and write it in diffusers format with recipe.json. The "
                                   "shipped copy is daclip_lora/tiny/assets/tiny_sd (about 28 minutes on 2 CPU cores). "
                                   "--daclip makes the tiny DA-CLIP base instead, --restorer the web app's "
                                   "restorer (which needs both bases).")
    p.add_argument("out", type=Path, help="output folder (replaced if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--daclip", action="store_true",
                   help="make the tiny DA-CLIP base instead: its vision tower pretrained on the synthetic "
                        "degradations (shipped copy: daclip_lora/tiny/assets/tiny_daclip, about 15 minutes)")
    p.add_argument("--daclip-steps", type=int, default=4500, help="training steps of --daclip (default 4500)")
    p.add_argument("--restorer", action="store_true",
                   help="make the tiny restorer the web app starts with instead (the embedded demo's controller "
                        "LoRA and restoration LoRA on the shipped bases; shipped copy: "
                        "daclip_lora/tiny/assets/tiny_restorer)")
    p.set_defaults(func=_cmd_make_tiny_base)
