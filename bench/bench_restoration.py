"""Degradation-aware SD LoRA: training-step and sampling costs, measured side by side in one run.

Variants of each part run interleaved (A B C A B C ...) after one warm-up each; every figure is the median
(min-max) of ``--repeats`` rounds, every ratio is taken per round.

1. cached training step (our full step: conditioning, LQ concat, loss, backward, AdamW) vs a bare
   UNet step (the same UNet + LoRA, forward + backward + AdamW on the same latents and text context);
2. uncached step (VAE + DA-CLIP every step, as common scripts do) vs cached: the speed-up;
3. denoising loop with merged LoRA vs the base UNet's loop (same steps, scheduler, shapes); unmerged too;
4. peak memory of a short training run (own subprocess), and trainable-parameter counts of the SD 1.5 /
   2.1 restoration models (meta device, no weights).

    python bench/bench_restoration.py                      # tiny SD (built locally), CPU
    python bench/bench_restoration.py --unet sd15 --resolution 256 --batch 2   # SD 1.5 UNet + VAE, DA-CLIP B-32
                                                                               # (random weights, real shapes)
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _timing import fmt, fmt_ratio, interleaved  # same folder: the script's directory is on sys.path


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _setup(args, workdir: Path):
    """Tiny SD + tiny DA-CLIP, or (--unet sd15/sd21) SD's UNet and VAE and DA-CLIP B-32 with random weights."""
    from daclip_lora.data.synthetic import make_dataset
    from daclip_lora.training.options import load_options
    from daclip_lora.tiny.sd import build_tiny_sd

    base = build_tiny_sd(workdir / "sd", seed=0)
    if args.unet != "tiny":
        import json as _json

        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from daclip_lora.restoration.sd_configs import UNET_CONFIGS

        from diffusers import AutoencoderKL

        from daclip_lora.restoration.sd_configs import VAE_CONFIGS

        cfg = UNET_CONFIGS[args.unet]
        UNet2DConditionModel(**cfg).save_pretrained(str(base / "unet"))
        AutoencoderKL(**VAE_CONFIGS["sd"]).save_pretrained(str(base / "vae"))
        te = _json.loads((base / "text_encoder" / "config.json").read_text())
        te.update(hidden_size=cfg["cross_attention_dim"], projection_dim=cfg["cross_attention_dim"],
                  intermediate_size=4 * cfg["cross_attention_dim"], num_attention_heads=8)
        CLIPTextModel(CLIPTextConfig(**te)).save_pretrained(str(base / "text_encoder"))
    make_dataset(workdir / "ds", size=args.batch * 2, val_size=2, patch_size=args.resolution, distortions=["noisy"])
    yml = workdir / "bench.yml"
    yml.write_text(f"""name: bench
task: restoration
distortion: [noisy]
datasets:
  train: {{mode: MD, dataroot: {workdir / 'ds' / 'train'}, batch_size: {args.batch}, patch_size: {args.resolution}}}
daclip: {{model: {'daclip_tiny' if args.unet == 'tiny' else 'daclip_ViT-B-32'}}}
sd: {{base: {base}, lora: {{rank: 8, alpha: 8}}}}
train: {{niter: 3, val_freq: 0}}
logger: {{save_checkpoint_freq: 1000}}
runtime: {{device: {args.device}, cache: true}}
""")
    return load_options(yml, is_train=True, root=workdir)


def training_costs(args, workdir: Path) -> dict:
    from accelerate import Accelerator

    from daclip_lora.training.tasks.restoration import RestorationTrainer

    opt = _setup(args, workdir)
    trainer = RestorationTrainer(opt)
    trainer.setup(Accelerator(cpu=args.device == "cpu"))
    model = trainer.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    raw = next(iter(torch.utils.data.DataLoader(trainer._train, batch_size=args.batch)))
    raw["_index"] = torch.arange(args.batch)
    cached = {**trainer.frozen_features(raw), "_index": raw["_index"]}

    def our_step(batch):
        optimizer.zero_grad(set_to_none=True)
        trainer.training_step(model, batch)["loss"].backward()
        optimizer.step()

    unet, z = model.unet, cached["z_gt"]
    t = torch.randint(0, 1000, (args.batch,), device=z.device)
    context = trainer.prompt_hidden.expand(args.batch, -1, -1)
    noise = torch.randn_like(z)
    # the bare UNet needs the input width its conv_in expects (8 with the LQ latent): give it zeros
    bare_in = torch.cat([z, torch.zeros_like(z)], 1) if model.config.lq_latent else z

    def bare_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(unet(bare_in, t, encoder_hidden_states=context).sample, noise).backward()
        optimizer.step()

    times = interleaved({"bare": bare_step, "cached": lambda: our_step(cached), "uncached": lambda: our_step(raw)},
                        args.repeats, _sync)
    return {**times, "trainable": sum(p.numel() for p in params)}


def sampling_costs(args, workdir: Path) -> dict:
    from daclip_lora.restoration.serialization import save_restoration
    from daclip_lora.restoration.pipeline import load_sd_components, RestorationPipeline
    from daclip_lora.restoration.schedulers import make_scheduler
    from daclip_lora.training.tasks.restoration import RestorationTrainer

    opt = _setup(args, workdir)
    folder = save_restoration(RestorationTrainer(opt).model, workdir / "restoration")
    sd = load_sd_components(opt.sd.base)
    base_unet = sd.unet.to(args.device)
    f = 8
    shape = (1, 4, args.resolution // f, args.resolution // f)
    z, z_lq = torch.randn(shape, device=args.device), torch.randn(shape, device=args.device)
    ctx = torch.randn(1, 77, base_unet.config.cross_attention_dim, device=args.device)

    def loop(unet, extra):
        sched = make_scheduler("ddim", sd.scheduler)
        sched.set_timesteps(args.steps)
        x = z
        with torch.no_grad():
            for t in sched.timesteps:
                inp = torch.cat([x, z_lq], 1) if extra else x
                x = sched.step(unet(inp, t, encoder_hidden_states=ctx).sample, t, x).prev_sample

    pipes = {merged: RestorationPipeline.from_pretrained(folder, merge_lora=merged, device=args.device)
             for merged in (False, True)}
    lq = torch.rand(1, 3, args.resolution, args.resolution)
    return interleaved({"base": lambda: loop(base_unet, False), "merged": lambda: loop(pipes[True].model.unet, True),
                        "unmerged": lambda: loop(pipes[False].model.unet, True),
                        "pipeline": lambda: pipes[True](lq, steps=args.steps)}, args.repeats, _sync)


def peak_memory(args) -> float:
    out = subprocess.run([sys.executable, __file__, "--peak-child", "--unet", args.unet, "--resolution",
                          str(args.resolution), "--batch", str(args.batch), "--device", args.device],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def _peak_child(args) -> None:
    from daclip_lora.training.engine import Engine
    from daclip_lora.training.tasks.restoration import RestorationTrainer

    with tempfile.TemporaryDirectory() as tmp:
        opt = _setup(args, Path(tmp))
        Engine(opt, RestorationTrainer(opt)).fit()
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_mb": peak / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=["tiny", "sd15", "sd21"], default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        return _peak_child(args)

    with tempfile.TemporaryDirectory() as tmp:
        train = training_costs(args, Path(tmp) / "train")
        sample = sampling_costs(args, Path(tmp) / "sample")
    peak = peak_memory(args)
    print(f"unet={args.unet} resolution={args.resolution} batch={args.batch} device={args.device} "
          f"threads={torch.get_num_threads()}")
    t, m = train, sample
    print(f"seconds: median (min-max) of {args.repeats} interleaved rounds; ratios per round")
    print(f"bare UNet+LoRA step        {fmt(t['bare'])}")
    print(f"cached training step       {fmt(t['cached'])}   / bare {fmt_ratio(t['cached'], t['bare'])}")
    print(f"uncached training step     {fmt(t['uncached'])}   cache speed-up {fmt_ratio(t['uncached'], t['cached'])}")
    print(f"base UNet loop ({args.steps} steps)  {fmt(m['base'])}")
    print(f"merged LoRA loop           {fmt(m['merged'])}   / base {fmt_ratio(m['merged'], m['base'])}")
    print(f"unmerged LoRA loop         {fmt(m['unmerged'])}   / base {fmt_ratio(m['unmerged'], m['base'])}")
    print(f"full pipeline call         {fmt(m['pipeline'])}   (DA-CLIP + VAE encode/decode + loop, merged)")
    print(f"peak memory of a 3-step training run: {peak:.0f} MB ({'CUDA' if args.device.startswith('cuda') else 'process RSS'})")
    print(f"trainable parameters here: {train['trainable']:,}")

    from daclip_lora.restoration.sd_configs import count_restoration_parameters

    for name in ("sd15", "sd21"):
        c = count_restoration_parameters(name, rank=8)
        print(f"{name} rank 8: LoRA {c['lora']:,} + projector {c['projector']:,} + new conv_in {c['conv_in_new']:,} "
              f"= {100 * (c['lora'] + c['projector'] + c['conv_in_new']) / c['unet']:.2f}% of {c['unet']:,} UNet parameters")


if __name__ == "__main__":
    main()
