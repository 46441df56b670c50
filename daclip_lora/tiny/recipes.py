"""Tiny *pretrained* bases that ship with the package (Stable Diffusion and DA-CLIP), and the recipes that make them.

Random tiny bases cannot show restoration (a random VAE cannot even reconstruct its input), so the
embedded demo and the learnability tests start from a small SD folder that was *trained*, on CPU, by
:func:`train_tiny_sd` from photographs that ship inside scikit-image:

1. **VAE** (diffusers ``AutoencoderKL``, 2 levels: downsampling x2, 4 latent channels, 0.62 M parameters)
   trained to reconstruct random 32 px crops (L1 + L2 + a small KL term) of 11 photographs; three other
   photographs (``chelsea``, ``coffee``, ``gravel``) are held out and only used to measure reconstruction PSNR
   on 64 px patches. ``scaling_factor`` is set to ``1 / std`` of the training latents, as SD did.
2. **UNet** (diffusers ``UNet2DConditionModel``, 3 levels, 1.4 M parameters, cross-attention at the 8 px level
   of a 32 px latent, to keep CPU steps short) trained as an epsilon-prediction denoiser
   of the VAE latents of a fixed pool of clean 64 px crops, with the empty prompt (SD 1.x scheduler,
   Min-SNR-5 weighting): a real image prior, not random weights.
3. **Text encoder** (CLIP text model, 2 layers, width 32) stays random and frozen: nothing here can teach it
   language. The tokenizer is CLIP's real BPE vocabulary (from open_clip's copy).

Everything is a deterministic function of ``seed`` on a given torch version and thread count. The folder is
written in diffusers format (fp16 safetensors) with ``recipe.json`` beside it: recipe, seed, steps, versions,
metrics and timings. ``daclip-lora make-tiny-base OUT`` re-creates it.

The tiny DA-CLIP base (:func:`train_tiny_daclip`, ``make-tiny-base OUT --daclip``) is ``daclip_tiny`` whose vision
tower was trained on the synthetic degradations (its text tower stays random); :func:`train_tiny_restorer`
(``--restorer``) runs the embedded demo on both bases and keeps its LoRAs for the web app.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .._utils.image_metrics import batch_psnr
from .._utils.threads import torch_threads
from ..data.synthetic import HELD_OUT_IMAGES
from ..restoration.sd_configs import SD_SCHEDULER, TEXT_ENCODER_CONFIGS, UNET_CONFIGS, VAE_CONFIGS

logger = logging.getLogger(__name__)

__all__ = ["HELD_OUT_IMAGES", "train_tiny_daclip", "train_tiny_sd"]


# ----------------------------------------------------------------------------------- data
def _photographs(held_out: bool) -> List[torch.Tensor]:
    from ..data.synthetic import builtin_images

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


# ----------------------------------------------------------------------------------- stages
def _train_vae(steps: int, batch: int, crop: int, lr: float, seed: int, held_out: torch.Tensor,
               log_every: int) -> tuple:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIGS["tiny_pretrained"])
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
                        _vaebatch_psnr(vae, held_out))
            vae.train()
    vae.eval().requires_grad_(False)
    return vae, _vaebatch_psnr(vae, held_out)


@torch.no_grad()
def _vaebatch_psnr(vae, images: torch.Tensor) -> float:
    vae.eval()
    rec = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample
    return batch_psnr(((rec + 1) / 2).clamp(0, 1), images)


def _train_unet(vae, text_hidden: torch.Tensor, scheduler, steps: int, batch: int, patch: int, lr: float,
                seed: int, held_out: torch.Tensor, log_every: int, pool_size: int = 4096) -> tuple:
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import compute_snr

    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**{**UNET_CONFIGS["tiny_pretrained"], "sample_size": patch // _vae_factor(vae)})
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
def _json_config(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _sd_record(out: Path, seed: int, vae_steps: int, unet_steps: int, batch: int, pipe, scaling: float,
               vae_psnr: float, t_vae: float, denoise: Dict[str, float], seconds: float) -> Dict[str, Any]:
    """The ``recipe.json`` of the tiny SD base."""
    import diffusers
    import transformers

    vae, unet, text_encoder = pipe.vae, pipe.unet, pipe.text_encoder
    return {
        "recipe": "daclip_lora.tiny.recipes.train_tiny_sd",
        "command": f"daclip-lora make-tiny-base {out.name} --seed {seed} --vae-steps {vae_steps} "
                   f"--unet-steps {unet_steps} --batch {batch}",
        "seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "batch": batch,
        "threads": torch.get_num_threads(),
        "data": {"source": "skimage.data photographs (daclip_lora.data.synthetic.BUILTIN_IMAGES)",
                 "held_out_images": list(HELD_OUT_IMAGES), "vae_crop": 32, "unet_patch": 64},
        "vae": {"config": _json_config(VAE_CONFIGS["tiny_pretrained"]),
                "parameters": sum(p.numel() for p in vae.parameters()), "scaling_factor": scaling,
                "held_out_reconstruction_psnr_db": round(vae_psnr, 2), "seconds": round(t_vae, 1)},
        "unet": {"config": _json_config(UNET_CONFIGS["tiny_pretrained"]),
                 "parameters": sum(p.numel() for p in unet.parameters()), "objective": "epsilon, Min-SNR-5",
                 "held_out_noise_mse": denoise},
        "text_encoder": {"parameters": sum(p.numel() for p in text_encoder.parameters()),
                         "trained": False},
        "weights_dtype": "float16",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "seconds": round(seconds, 1),
    }


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

    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..restoration.backbone import encode_prompt
    from .sd import build_clip_tokenizer

    out = Path(out)
    start = time.perf_counter()
    with torch_threads(threads):
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
            text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIGS["tiny"])).eval().requires_grad_(False)
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
        record = _sd_record(out, seed, vae_steps, unet_steps, batch, pipe, scaling, vae_psnr, t_vae, denoise,
                            time.perf_counter() - start)
        (out / "recipe.json").write_text(json.dumps(record, indent=2))
        logger.info("wrote the tiny pretrained SD base to %s (VAE held-out PSNR %.2f dB)", out, vae_psnr)
        return record


# ------------------------------------------------------------------------------- DA-CLIP base
def _degraded_pool(crops: int, seed: int, held_out: bool = False) -> tuple:
    """``crops`` random 64 px patches of the scikit-image photographs (cycling over them, like the demo's data; with
    ``held_out`` only :data:`HELD_OUT_IMAGES`, else only the others), each degraded by all ten degradations:
    ``(images (10 * crops, 3, 64, 64), labels, class names)``."""
    import numpy as np

    from ..data.degrade import DEGRADATION_FUNCTIONS, degrade
    from ..data.synthetic import builtin_images, random_patches

    classes = sorted(DEGRADATION_FUNCTIONS)
    sources = [s for s in builtin_images() if (s[0] in HELD_OUT_IMAGES) == held_out]
    patches = random_patches(sources, crops, 64, np.random.default_rng(seed))
    images, labels = [], []
    for i, (patch, _, _) in enumerate(patches):
        for k, name in enumerate(classes):
            images.append(torch.from_numpy(degrade(patch, name, seed=[seed, k, i])).permute(2, 0, 1))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels), classes


def _accuracy(predict, split: tuple) -> Dict[str, Any]:
    """Overall and per-class accuracy of ``predict`` (images -> class indices) on ``(images, labels, classes)``."""
    images, labels, classes = split
    with torch.no_grad():
        pred = torch.cat([predict(images[i:i + 256]) for i in range(0, len(images), 256)])
    per = {c: round(float((pred[labels == k] == k).float().mean()), 3) for k, c in enumerate(classes)}
    return {"overall": round(float((pred == labels).float().mean()), 4), "per_class": per}


def _train_tower_with_probe(model, train: tuple, held_out: Dict[str, tuple], steps: int, batch: int, lr: float,
                            seed: int, log_every: int) -> Dict[str, Dict[str, Any]]:
    """Train the vision tower through a linear probe on its normalised embedding (the probe is discarded); the
    probe and zero-shot accuracies on each ``held_out`` split (the first one is logged during training)."""
    import math

    import torch.nn.functional as F

    from ..clip.factory import get_tokenizer
    from ..data.datasets import clip_batch

    images, labels, classes = train
    visual = model.clip.visual.requires_grad_(True).train()
    probe = torch.nn.Linear(model.clip.text_projection.shape[1], len(classes))
    opt = torch.optim.AdamW(list(visual.parameters()) + list(probe.parameters()), lr=lr, weight_decay=0.05)
    size = model.image_size

    def logits(x: torch.Tensor) -> torch.Tensor:
        return probe(F.normalize(visual(clip_batch(x, size)), dim=-1) * 10.0)

    first = next(iter(held_out.values()))
    gen = torch.Generator().manual_seed(seed + 12)
    warmup = max(1, min(100, steps // 10))
    logger.info("tiny DA-CLIP: %d training images, %d steps", len(images), steps)
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = images[idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(logits(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            visual.eval()
            logger.info("tiny DA-CLIP step %d/%d loss %.4f held-out probe accuracy %.3f", step, steps,
                        loss.item(), _accuracy(lambda v: logits(v).argmax(1), first)["overall"])
            visual.train()
    visual.eval().requires_grad_(False)
    with torch.no_grad():
        text = model.encode_text(get_tokenizer("daclip_tiny")(classes), normalize=True)
    return {name: {"probe": _accuracy(lambda v: logits(v).argmax(1), split),
                   "zero_shot": _accuracy(lambda v: (F.normalize(visual(clip_batch(v, size)), dim=-1) @ text.T
                                                     ).argmax(1), split)}
            for name, split in held_out.items()}


def train_tiny_daclip(out: Union[str, Path], seed: int = 0, steps: int = 4500, batch: int = 64, crops: int = 1600,
                      lr: float = 1e-3, threads: Optional[int] = 2, log_every: int = 250) -> Dict[str, Any]:
    """Pretrain the vision tower of the tiny DA-CLIP (``daclip_tiny``) on the synthetic degradations and write the
    DA-CLIP checkpoint (float16 safetensors) with ``recipe.json`` to ``out``.

    A real DA-CLIP starts from a CLIP that web-scale pretraining taught what images look like, low-level statistics
    included; a random tiny ViT knows nothing, and a 300-step controller LoRA on top of it cannot learn to tell mild
    degradations (JPEG, raindrops, motion blur, shadows) apart. This recipe stands in for that pretraining: the
    vision tower (``daclip_tiny`` initialised with ``torch.manual_seed(seed)``) learns to classify the ten
    synthetic degradations of ``crops`` random 64 px patches of the scikit-image photographs (the demo's source)
    through a linear probe on its normalised embedding (cross-entropy, AdamW, warm-up + cosine, horizontal flips).
    The probe is then discarded and the text tower stays random, so the base knows image statistics but not the
    degradation *words*: its zero-shot accuracy stays near chance and aligning images with words is left to the
    controller LoRA, as in DA-CLIP. The controller is initialised from the trained tower (zero modules zero).

    Args:
        out: the folder to write (replaced if it exists).
        seed: initialisation, crops, degradation draws and batches derive from it.
        steps, batch, crops, lr: optimisation steps, batch size, training patches per degradation, peak learning rate.
        threads: torch CPU threads during the recipe; ``None`` keeps the current setting.

    Returns:
        The recipe record also written to ``out/recipe.json`` (probe and zero-shot accuracy, per class, on new
        crops and degradation draws).
    """
    import shutil

    from ..clip.checkpoint import save_model
    from ..clip.factory import create_model

    if steps < 1 or batch < 1 or crops < 1:
        raise ValueError(f"steps, batch and crops must be >= 1, got steps={steps}, batch={batch}, crops={crops}")
    out = Path(out)
    start = time.perf_counter()
    with torch_threads(threads):
        with torch.random.fork_rng():
            train = _degraded_pool(crops, seed + 10)
            held_out = {"new_crops": _degraded_pool(48, seed + 11),
                        "new_photographs": _degraded_pool(48, seed + 13, held_out=True)}
            t_data = time.perf_counter() - start
            torch.manual_seed(seed)
            model = create_model("daclip_tiny")
            acc = _train_tower_with_probe(model, train, held_out, steps, batch, lr, seed, log_every)
            model.initial_controller()
            model.eval().requires_grad_(False)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        save_model(model.half(), out / "daclip_tiny.safetensors", model_name="daclip_tiny")
        record = {
            "recipe": "daclip_lora.tiny.recipes.train_tiny_daclip",
            "command": f"daclip-lora make-tiny-base {out.name} --daclip --seed {seed} --daclip-steps {steps}",
            "seed": seed, "steps": steps, "batch": batch, "lr": lr, "threads": torch.get_num_threads(),
            "model": "daclip_tiny",
            "objective": "cross-entropy over the ten synthetic degradations through a linear probe on the vision "
                         "tower's normalised embedding (probe discarded); text tower random and untrained",
            "data": {"source": "the skimage.data photographs (daclip_lora.data.synthetic.BUILTIN_IMAGES) but the "
                               "held-out ones, 64 px patches (daclip_lora.data.synthetic.random_patches), each "
                               "degraded by all ten degradations",
                     "training_patches_per_degradation": crops,
                     "held_out_images": list(HELD_OUT_IMAGES),
                     "held_out": "48 patches per degradation for each split: 'new_crops' are new crops and "
                                 "degradation draws (seed + 11) of the training photographs, as the demo's val split; "
                                 "'new_photographs' are crops (seed + 13) of the held-out photographs only, as the "
                                 "demo's test split"},
            "held_out_probe_accuracy": acc["new_crops"]["probe"],
            "held_out_zero_shot_accuracy": acc["new_crops"]["zero_shot"],
            "new_photographs_probe_accuracy": acc["new_photographs"]["probe"],
            "new_photographs_zero_shot_accuracy": acc["new_photographs"]["zero_shot"],
            "parameters": {"vision_tower": sum(p.numel() for p in model.clip.visual.parameters()),
                           "total": sum(p.numel() for p in model.parameters())},
            "weights_dtype": "float16",
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - start, 1)},
        }
        (out / "recipe.json").write_text(json.dumps(record, indent=2))
        logger.info("wrote the tiny pretrained DA-CLIP base to %s (held-out probe accuracy %.3f on new crops, "
                    "%.3f on new photographs)", out, acc["new_crops"]["probe"]["overall"],
                    acc["new_photographs"]["probe"]["overall"])
        return record
