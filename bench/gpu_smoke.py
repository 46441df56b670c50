"""GPU smoke test and timings of the restoration core at SD 1.5 scale (random weights, real architectures).

On a CUDA machine (default ``--device cuda``, bf16 autocast, 512 px):

1. builds an SD 1.5-sized UNet + SD VAE + a random DA-CLIP B-32, wraps them in :class:`RestorationUNet` with LoRA;
2. times one training step (forward + backward + AdamW) of the restoration model against a bare UNet step
   (same batch, same autocast) -> ratio;
3. runs the whole :class:`RestorationPipeline` (merged vs base UNet, same steps) on the GPU -> sampling ratio,
   and a tiled restoration of a 1024 px image (checks that tiling runs on the device);
4. checks every output is finite and on the device.

    python bench/gpu_smoke.py                       # CUDA, bf16, 512 px
    python bench/gpu_smoke.py --device cpu --resolution 64 --precision fp32 --model daclip_tiny   # CPU smoke
"""

from __future__ import annotations

import argparse
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from daclip_lora.restoration.backbone import SDBackbone, SDComponents
    from daclip_lora.restoration.lora import add_unet_lora
    from daclip_lora.restoration.conditioning import Conditions, conditioning_paths
    from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
    from daclip_lora.clip.factory import load_daclip
    from daclip_lora.restoration.pipeline import PRECISIONS, RestorationPipeline
    from daclip_lora.restoration.sd_configs import SD_SCHEDULER, UNET_CONFIGS, VAE_CONFIGS
    from daclip_lora.tiny.sd import build_clip_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="daclip_ViT-B-32", help="DA-CLIP model (random weights)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device here; run on a GPU machine or pass --device cpu for a smoke run")
    dtype = PRECISIONS[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32")

    torch.manual_seed(0)
    small = args.resolution <= 128
    unet_cfg = dict(UNET_CONFIGS["sd15"], sample_size=args.resolution // 8)
    if small:  # CPU smoke: SD's structure at toy width
        unet_cfg.update(block_out_channels=(32, 64, 64, 64), attention_head_dim=8)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**(dict(VAE_CONFIGS["sd"], block_out_channels=(32, 32, 32, 32)) if small else VAE_CONFIGS["sd"]))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072 if not small else 256,
                                        num_hidden_layers=12 if not small else 1, num_attention_heads=12,
                                        projection_dim=768, max_position_embeddings=77))
    comps = SDComponents(tokenizer=build_clip_tokenizer(), text_encoder=text, vae=vae, unet=unet,
                         scheduler=DDPMScheduler(**SD_SCHEDULER))
    for m in (text, vae, unet):
        m.requires_grad_(False).eval()
    daclip = load_daclip(args.model).eval().requires_grad_(False)
    embed = int(daclip.clip.text_projection.shape[1])
    cfg = RestorationConfig(base="random-sd15", daclip_model=args.model, embed_dim=embed, cross_attention_dim=768,
                            paths=conditioning_paths(num_tokens=4), lora={"rank": 8, "alpha": 8})
    model = RestorationUNet(unet, cfg)
    add_unet_lora(model.unet, cfg.lora)
    backbone = SDBackbone(comps).to(device)
    model.to(device)
    daclip.to(device)

    b, h = args.batch, args.resolution // 8
    z = torch.randn(b, 4, h, h, device=device)
    t = torch.randint(0, 1000, (b,), device=device)
    ctx = torch.randn(b, 77, 768, device=device)
    emb = torch.randn(b, embed, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def restoration_step():
        with autocast:
            loss = model(z, t, ctx, Conditions(image=emb, degradation=emb, lq_latent=z)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    bare = UNet2DConditionModel(**unet_cfg).to(device)
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-4)

    def bare_step():
        with autocast:
            loss = bare(z, t, encoder_hidden_states=ctx).sample.float().pow(2).mean()
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    train = _time(restoration_step, device, args.repeats)
    bare_train = _time(bare_step, device, args.repeats)
    print(f"training step: restoration LoRA {train * 1000:.1f} ms, bare full UNet {bare_train * 1000:.1f} ms, "
          f"ratio {train / bare_train:.2f}x")

    pipe = RestorationPipeline(backbone, model, daclip, precision=args.precision)
    lq = torch.rand(1, 3, args.resolution, args.resolution, device=device)
    with torch.no_grad():
        unmerged = _time(lambda: pipe(lq, steps=args.steps), device, 1)
        pipe.merge_lora()
        merged = _time(lambda: pipe(lq, steps=args.steps), device, 1)

        def base_loop():  # the same loop on a bare UNet: the floor for the denoising cost
            x = torch.randn(1, 4, h, h, device=device)
            c = torch.randn(1, 77, 768, device=device)
            with autocast:
                for step in range(args.steps):
                    x = x - 0.01 * bare_unet(x, torch.full((1,), 999 - step * 10, device=device),
                                             encoder_hidden_states=c).sample.float()
        bare_unet = UNet2DConditionModel(**unet_cfg).to(device).eval()
        base = _time(base_loop, device, 1)
        out = pipe(lq, steps=args.steps)
        # torch.device("cuda") != torch.device("cuda:0"): compare the device type and index the tensor reports
        if out.device.type != device.type:
            raise SystemExit(f"gpu_smoke: restored output is on {out.device}, expected {device.type}")
        if not torch.isfinite(out).all():
            raise SystemExit(f"gpu_smoke: {int((~torch.isfinite(out)).sum())} non-finite values in the output")
        big = torch.rand(1, 3, 2 * args.resolution, 2 * args.resolution, device=device)
        tiled = pipe(big, steps=2, tile_size=args.resolution)
        if tiled.shape != big.shape or not torch.isfinite(tiled).all():
            raise SystemExit(f"gpu_smoke: tiled output {tuple(tiled.shape)} for {tuple(big.shape)} input, "
                             f"{int((~torch.isfinite(tiled)).sum())} non-finite values")
    print(f"sampling {args.steps} steps at {args.resolution} px: merged {merged:.2f} s, unmerged {unmerged:.2f} s, "
          f"bare UNet loop {base:.2f} s; merged / bare {merged / base:.2f}x")

    # the one-step objective with a (fitted) fusion head: one UNet call and two decodes per image
    from dataclasses import replace

    one_cfg = replace(cfg, objective="one_step", one_step_t=50, fusion=True)
    one = RestorationUNet(UNet2DConditionModel(**unet_cfg), one_cfg)
    add_unet_lora(one.unet, one_cfg.lora)
    one.fusion.fitted = True
    one.to(device)
    one_pipe = RestorationPipeline(backbone, one, daclip, precision=args.precision)
    with torch.no_grad():
        one_pipe.merge_lora()
        one_s = _time(lambda: one_pipe(lq), device, args.repeats)
        out = one_pipe(lq)
        if out.device.type != device.type or not torch.isfinite(out).all():
            raise SystemExit(f"gpu_smoke: one-step output on {out.device}, "
                             f"{int((~torch.isfinite(out)).sum())} non-finite values")
    print(f"one-step restoration + fusion head at {args.resolution} px: {one_s * 1000:.0f} ms per image "
          f"({merged / one_s:.1f}x faster than {args.steps}-step sampling)")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB")
    print("gpu_smoke: OK")


if __name__ == "__main__":
    main()
