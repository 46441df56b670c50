"""Tiny *pretrained* Stable Diffusion base that ships with the package, and the recipe that makes it.

Random tiny bases cannot show restoration (a random VAE cannot even reconstruct its input), so the
embedded demo and the learnability tests start from a small SD folder that was *trained*, on CPU, by
:func:`train_tiny_sd` from photographs that ship inside scikit-image:

1. **VAE** (diffusers ``AutoencoderKL``, 2 levels: downsampling x2, 4 latent channels, 0.62 M parameters)
   trained to reconstruct random 32 px crops (L1 + L2 + a small KL term) of 11 photographs; three other
   photographs (``chelsea``, ``coffee``, ``gravel``) are held out and only used to measure reconstruction PSNR
   on 64 px patches. ``scaling_factor`` is set to ``1 / std`` of the training latents, as SD did.
2. **UNet** (diffusers ``UNet2DConditionModel``, 3 levels, 1.4 M parameters, cross-attention at the 8 px level
   of a 32 px latent: self-attention at 16 px doubled the step time) trained as an epsilon-prediction denoiser
   of the VAE latents of a fixed pool of clean 64 px crops, with the empty prompt (SD 1.x scheduler,
   Min-SNR-5 weighting): a real image prior, not random weights.
3. **Text encoder** (CLIP text model, 2 layers, width 32) stays random and frozen: nothing here can teach it
   language. The tokenizer is CLIP's real BPE vocabulary (from open_clip's copy).

Everything is a deterministic function of ``seed`` on a given torch version and thread count. The folder is
written in diffusers format (fp16 safetensors) with ``recipe.json`` beside it: recipe, seed, steps, versions,
metrics and timings. ``daclip-lora make-tiny-base OUT`` re-creates it.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

__all__ = ["EMBEDDED_SD", "EMBEDDED_RESTORER", "HELD_OUT_IMAGES", "PRETRAINED_UNET", "PRETRAINED_VAE",
           "embedded_sd_base", "embedded_restorer", "train_tiny_sd", "train_tiny_restorer"]

#: Where the shipped tiny pretrained SD folder lives inside the installed package.
EMBEDDED_SD = Path(__file__).resolve().parent / "assets" / "tiny_sd"
#: The shipped trained tiny restorer (DA-CLIP + controller LoRA + restoration LoRA) that ``daclip-lora app`` uses.
EMBEDDED_RESTORER = Path(__file__).resolve().parent / "assets" / "tiny_restorer"
#: scikit-image photographs never seen by the VAE or UNet of the shipped base.
HELD_OUT_IMAGES = ("chelsea", "coffee", "gravel")

PRETRAINED_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                      block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16, sample_size=64,
                      mid_block_add_attention=False)
PRETRAINED_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)


def embedded_sd_base() -> Path:
    """The shipped tiny pretrained SD folder (raises with the re-create command if it is missing)."""
    if not (EMBEDDED_SD / "model_index.json").is_file():
        raise FileNotFoundError(f"the embedded tiny SD base is missing from {EMBEDDED_SD}; re-create it with "
                                f"`daclip-lora make-tiny-base {EMBEDDED_SD}` (about 28 minutes on 2 CPU cores)")
    return EMBEDDED_SD


# ----------------------------------------------------------------------------------- data
def embedded_restorer() -> Path:
    """The shipped tiny restorer's restoration folder; its ``restoration.json`` points, by paths relative to it, at
    the shipped SD base, DA-CLIP checkpoint and controller LoRA.

    Raises:
        FileNotFoundError: a part is missing (with the command that re-creates it).
    """
    folder = EMBEDDED_RESTORER
    parts = (folder / "restoration" / "restoration.json", embedded_sd_base(), folder / "daclip_tiny.safetensors",
             folder / "controller_lora")
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the embedded tiny restorer is incomplete (missing {', '.join(missing)}); re-create "
                                f"it with `daclip-lora make-tiny-base {folder} --restorer` (about 4 minutes on 2 CPU "
                                f"cores), or pass trained weights with --weights")
    return folder / "restoration"


def train_tiny_restorer(out: Union[str, Path], seed: int = 0, threads: Optional[int] = 2) -> Dict[str, Any]:
    """Train the tiny restorer the web app starts with: exactly the embedded demo (``daclip-lora demo``, preset
    ``full``, ``seed``) on the shipped SD base, then keep its DA-CLIP (fp16), controller LoRA and restoration
    LoRA in ``out`` with ``recipe.json`` (the demo's numbers).
    """
    import shutil
    import tempfile

    from .checkpoint import save_model
    from .demo import run_demo
    from .factory import create_model

    out = Path(out)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="daclip_lora_restorer_") as tmp:
            summary = run_demo(Path(tmp) / "demo", preset="full", seed=seed)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            model = create_model("daclip_tiny", pretrained=summary["daclip_base"])
            save_model(model.half(), out / "daclip_tiny.safetensors", model_name="daclip_tiny")
            shutil.copytree(summary["controller_lora"], out / "controller_lora")
            shutil.copytree(summary["sd_lora"], out / "restoration")
        config_path = out / "restoration" / "restoration.json"
        config = json.loads(config_path.read_text())
        # where the parts live inside the package, relative to restoration.json's folder
        config.update(base="../../tiny_sd", daclip_pretrained="../daclip_tiny.safetensors",
                      daclip_adapter="../controller_lora")
        config_path.write_text(json.dumps(config, indent=2))
        keep = ("controller_accuracy_before", "controller_accuracy_after", "psnr_lq", "psnr_restored", "ssim_lq",
                "ssim_restored", "degradations_improved", "restoration_per_degradation", "sampling", "seconds")
        record = {"recipe": "daclip_lora.tiny_bases.train_tiny_restorer",
                  "command": f"daclip-lora make-tiny-base {out.name} --restorer --seed {seed}", "seed": seed,
                  "what": "the embedded demo (preset full) on the shipped tiny SD base; DA-CLIP stored as float16",
                  "threads": torch.get_num_threads(),
                  "demo": {k: summary[k] for k in keep},
                  "versions": {"torch": torch.__version__, "python": platform.python_version()}}
        (out / "recipe.json").write_text(json.dumps(record, indent=2))
        return record
    finally:
        torch.set_num_threads(previous_threads)


def _photographs(held_out: bool) -> List[torch.Tensor]:
    from .data.synthetic import builtin_images

    return [torch.from_numpy(im).permute(2, 0, 1).contiguous() for name, im, _ in builtin_images()
            if (name in HELD_OUT_IMAGES) == held_out]


def _random_crops(pool: Sequence[torch.Tensor], n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ``size`` px crops (random photograph, position, horizontal flip) in ``[0, 1]``."""
    out = []
    for _ in range(n):
        im = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        _, h, w = im.shape
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        patch = im[:, y:y + size, x:x + size]
        if float(torch.rand(1, generator=gen)) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


# ----------------------------------------------------------------------------------- stages
def _train_vae(steps: int, batch: int, crop: int, lr: float, seed: int, held_out: torch.Tensor,
               log_every: int) -> tuple:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**PRETRAINED_VAE)
    pool = _photographs(held_out=False)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(1, steps + 1):
        x = _random_crops(pool, batch, crop, gen) * 2 - 1
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            logger.info("vae step %d/%d loss %.4f held-out PSNR %.2f dB", step, steps, loss.item(),
                        _vae_psnr(vae, held_out))
            vae.train()
    vae.eval().requires_grad_(False)
    return vae, _vae_psnr(vae, held_out)


@torch.no_grad()
def _vae_psnr(vae, images: torch.Tensor) -> float:
    vae.eval()
    rec = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample
    return _psnr(((rec + 1) / 2).clamp(0, 1), images)


def _train_unet(vae, text_hidden: torch.Tensor, scheduler, steps: int, batch: int, patch: int, lr: float,
                seed: int, held_out: torch.Tensor, log_every: int, pool_size: int = 4096) -> tuple:
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import compute_snr

    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**{**PRETRAINED_UNET, "sample_size": patch // _vae_factor(vae)})
    pool = _photographs(held_out=False)
    gen = torch.Generator().manual_seed(seed + 3)
    sf = vae.config.scaling_factor
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    n_t = scheduler.config.num_train_timesteps
    with torch.no_grad():
        z_val = vae.encode(held_out * 2 - 1).latent_dist.mean * sf
        # a fixed pool of clean latents: the VAE encode would otherwise cost a third of every step
        latents = torch.cat([vae.encode(_random_crops(pool, 64, patch, gen) * 2 - 1).latent_dist.mean * sf
                             for _ in range(pool_size // 64)])
    unet.train()
    for step in range(1, steps + 1):
        z = latents[torch.randint(len(latents), (batch,), generator=gen)]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, n_t, (batch,), generator=gen)
        pred = unet(scheduler.add_noise(z, noise, t), t, encoder_hidden_states=text_hidden.expand(batch, -1, -1),
                    return_dict=False)[0]
        snr = compute_snr(scheduler, t)
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            logger.info("unet step %d/%d loss %.4f held-out denoising MSE %s", step, steps, loss.item(),
                        _denoise_report(unet, z_val, text_hidden, scheduler, seed))
            unet.train()
    unet.eval().requires_grad_(False)
    return unet, _denoise_report(unet, z_val, text_hidden, scheduler, seed)


@torch.no_grad()
def _denoise_report(unet, z: torch.Tensor, text_hidden: torch.Tensor, scheduler, seed: int) -> Dict[str, float]:
    """Held-out noise-prediction MSE at a few timesteps (1.0 = predicting zero; lower is a better prior)."""
    unet.eval()
    gen = torch.Generator().manual_seed(seed + 4)
    noise = torch.randn(z.shape, generator=gen)
    out = {}
    for t_value in (50, 250, 500, 900):
        t = torch.full((z.shape[0],), t_value, dtype=torch.long)
        pred = unet(scheduler.add_noise(z, noise, t), t, encoder_hidden_states=text_hidden.expand(z.shape[0], -1, -1),
                    return_dict=False)[0]
        out[f"t{t_value}"] = round(float(((pred - noise) ** 2).mean()), 4)
    return out


def _vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------ recipe
def train_tiny_sd(out: Union[str, Path], seed: int = 0, vae_steps: int = 1500, unet_steps: int = 1500,
                  batch: int = 16, threads: Optional[int] = 2, log_every: int = 250) -> Dict[str, Any]:
    """Train the tiny pretrained SD base and write it to ``out`` (diffusers format + ``recipe.json``).

    Args:
        out: the folder to write (replaced if it exists).
        seed: everything random (initialisation, crops, noise, timesteps) derives from it.
        vae_steps, unet_steps: optimisation steps of each stage (batch ``batch``).
        threads: torch CPU threads during the recipe (the result depends on it at float-rounding level);
            ``None`` keeps the current setting.

    Returns:
        The recipe record also written to ``out/recipe.json``.
    """
    import shutil

    import diffusers
    import transformers
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from .backbone import encode_prompt
    from .tiny_sd import SD_SCHEDULER, TINY_TEXT, build_clip_tokenizer

    out = Path(out)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng():
            held_out = _random_crops(_photographs(held_out=True), 64, 64, torch.Generator().manual_seed(seed + 99))
            logger.info("stage 1/2: VAE, %d steps", vae_steps)
            vae, vae_psnr = _train_vae(vae_steps, batch, 32, 2e-3, seed, held_out, log_every)
            t_vae = time.perf_counter() - start
            with torch.no_grad():
                crops = _random_crops(_photographs(False), 64, 64, torch.Generator().manual_seed(seed + 5))
                latents = vae.encode(crops * 2 - 1).latent_dist.mean
            scaling = round(1.0 / float(latents.std()), 5)
            vae.register_to_config(scaling_factor=scaling)
            torch.manual_seed(seed + 6)
            text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).eval().requires_grad_(False)
            tokenizer = build_clip_tokenizer()
            scheduler = DDPMScheduler(**SD_SCHEDULER)
            with torch.no_grad():
                empty = encode_prompt(tokenizer, text_encoder, [""])
            logger.info("stage 2/2: UNet denoiser, %d steps", unet_steps)
            unet, denoise = _train_unet(vae, empty, scheduler, unet_steps, batch, 64, 1e-3, seed, held_out,
                                        log_every)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        if out.exists():
            shutil.rmtree(out)
        pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
        pipe.to(torch.float32)
        record = {
            "recipe": "daclip_lora.tiny_bases.train_tiny_sd",
            "command": f"daclip-lora make-tiny-base {out.name} --seed {seed} --vae-steps {vae_steps} "
                       f"--unet-steps {unet_steps} --batch {batch}",
            "seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "batch": batch,
            "threads": torch.get_num_threads(),
            "data": {"source": "skimage.data photographs (daclip_lora.data.synthetic.BUILTIN_IMAGES)",
                     "held_out_images": list(HELD_OUT_IMAGES), "vae_crop": 32, "unet_patch": 64},
            "vae": {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in PRETRAINED_VAE.items()},
                    "parameters": sum(p.numel() for p in vae.parameters()), "scaling_factor": scaling,
                    "held_out_reconstruction_psnr_db": round(vae_psnr, 2), "seconds": round(t_vae, 1)},
            "unet": {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in PRETRAINED_UNET.items()},
                     "parameters": sum(p.numel() for p in unet.parameters()), "objective": "epsilon, Min-SNR-5",
                     "held_out_noise_mse": denoise},
            "text_encoder": {"parameters": sum(p.numel() for p in text_encoder.parameters()),
                             "trained": False},
            "weights_dtype": "float16",
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
            "seconds": round(time.perf_counter() - start, 1),
        }
        (out / "recipe.json").write_text(json.dumps(record, indent=2))
        logger.info("wrote the tiny pretrained SD base to %s (VAE held-out PSNR %.2f dB)", out, vae_psnr)
        return record
    finally:
        torch.set_num_threads(previous_threads)
