"""Degradation-aware SD LoRA for restoration (``task: restoration``): step and batch logic (evaluation:
:mod:`.restoration_eval`; the UNet-alone ablation: :mod:`.restoration_ablation`).

Frozen: VAE, text encoder, DA-CLIP. Trained: the UNet LoRA and every conditioning path's parameters (and, when
set, ``conv_in`` in full and a VAE-encoder LoRA; see :mod:`daclip_lora.restoration.model`).

Caching (``runtime.cache: true``): VAE latents of GT and LQ and the DA-CLIP embeddings are outputs of
frozen models, so they are computed once before training. Random crops, flips and rotations would make
every epoch's inputs different, so with caching they are turned off: each training image is centre-
cropped to ``patch_size`` once (a warning says so). Latents are the posterior *mean* in both modes, so a
cached and an uncached run see the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..._utils.image_metrics import image_metrics
from ..._utils.lora import adapters_disabled
from ...clip.factory import load_daclip
from ...data.datasets import RestorationDataset, block_pairs, degradation_groups
from ...data.images import write_image
from ...restoration.backbone import SDBackbone
from ...restoration.conditioning import Conditions, conditioning_paths
from ...restoration.diffusion import alpha_bar, diffusion_loss, diffusion_target, one_step
from ...restoration.fusion import fit_fusion_head, fusion_fit_data
from ...restoration.lora import add_restoration_lora, lora_spec
from ...restoration.model import RestorationConfig, RestorationUNet
from ...restoration.pipeline import RestorationPipeline
from ..latent_cache import LatentCache, fingerprint, sample_key
from ...restoration.serialization import save_restoration
from ..engine import TrainTask, per_sample_generators, per_sample_noise, per_sample_rand, per_sample_randint

logger = logging.getLogger(__name__)

__all__ = ["RestorationTrainer", "build_restoration_model", "restoration_dataset", "restore_sample",
           "sampling_kwargs"]


def restoration_dataset(block, distortion, train: bool, crop: str = "random",
                        clip_size: Union[int, Tuple[int, int]] = 224, seed: int = 0) -> RestorationDataset:
    pairs = block_pairs(block, distortion)
    if pairs is None:
        raise ValueError(f"restoration reads LQGT, MD or GT datasets, got mode {block.mode!r} "
                         f"(datasets.{block.phase})")
    augment = train and crop == "random"
    return RestorationDataset(pairs, block.patch_size if train else None, block.use_flip and augment,
                              block.use_rot and augment, block.small_images, block.on_corrupt, crop=crop,
                              clip_size=clip_size, scale=block.scale, seed=seed)


def _check_objective(s, c, steps: int) -> None:
    """The ``sd`` options that only make sense together (objective, fusion head, pixel losses)."""
    if s.objective == "one_step" and not 0 <= s.one_step_t < steps:
        raise ValueError(f"sd.one_step_t must be a timestep in [0, {steps}) of the base's scheduler, got "
                         f"{s.one_step_t}; small values (20-200) keep the LQ image's detail")
    if s.fusion and s.objective != "one_step":
        raise ValueError("sd.fusion needs sd.objective: one_step (the head is fitted on the model's outputs, "
                         "which a sampled diffusion model varies with steps, strength and seed); set sd.fusion: "
                         "false or sd.objective: one_step")
    if not s.fusion and not s.fusion_decoded_lq:
        raise ValueError("sd.fusion_decoded_lq: false chooses the fusion head's inputs, but sd.fusion is false (no "
                         "head); set sd.fusion: true or remove sd.fusion_decoded_lq")
    if s.objective != "one_step" and (s.loss.l1 or s.loss.lpips or s.loss.dists):
        raise ValueError("sd.loss.l1/lpips/dists are taken on the one-step output decoded to pixels; set "
                         "sd.objective: one_step or remove them")
    if s.objective == "one_step" and c.lq_start:
        raise ValueError("sd.conditioning.lq_start applies to the diffusion objective only; remove it or set "
                         "sd.objective: diffusion")


def _train_patch(opt) -> Optional[int]:
    """The training patch side (DA-CLIP saw patches of that size), recorded as the restorer's ``daclip_crop``."""
    blocks = [d for d in opt.datasets.values() if d.phase == "train"]
    return blocks[0].patch_size if blocks and blocks[0].patch_size else None


def build_restoration_model(opt, sd, daclip, seed: int = 0) -> RestorationUNet:
    """The trainable model for ``opt`` on the loaded SD components (LoRA initialised from ``seed``)."""
    s, c = opt.sd, opt.sd.conditioning
    if c.num_tokens < 1 and (c.image_context or c.degra_context):
        raise ValueError(f"sd.conditioning.num_tokens must be at least 1, got {c.num_tokens}")
    lora = lora_spec(s.lora)
    paths = conditioning_paths(c.image_context, c.degra_context, c.num_tokens, c.lq_latent, c.time_embedding,
                               c.modulated_lora, c.output_norm, c.paths)
    config = RestorationConfig(
        base=str(s.base), daclip_model=opt.daclip.model, daclip_pretrained=opt.daclip.pretrained,
        daclip_adapter=opt.daclip.adapter, embed_dim=int(daclip.clip.text_projection.shape[1]),
        cross_attention_dim=int(sd.unet.config.cross_attention_dim), paths=paths, prompt=s.prompt,
        latent_channels=int(sd.vae.config.latent_channels), lora=lora,
        prediction_type=sd.scheduler.config.prediction_type, objective=s.objective, one_step_t=s.one_step_t,
        one_step_input=s.one_step_input, train_conv_in=s.train_conv_in,
        vae_encoder_lora=lora_spec(s.vae_encoder_lora) if s.vae_encoder_lora is not None else None,
        fusion=s.fusion, fusion_decoded_lq=s.fusion_decoded_lq, text_encoder_lora=None, daclip_crop=_train_patch(opt))
    _check_objective(s, c, int(sd.scheduler.config.num_train_timesteps))
    if config.context_slots >= sd.tokenizer.model_max_length - 2:
        raise ValueError(f"{config.context_slots} DA-CLIP tokens leave no room for the prompt in "
                         f"{sd.tokenizer.model_max_length} positions; lower sd.conditioning.num_tokens")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RestorationUNet(sd.unet, config, vae_encoder=sd.vae.encoder)
        add_restoration_lora(model, lora)
    return model


if TYPE_CHECKING:  # pragma: no cover
    from ...metrics.losses import PerceptualLoss


def _perceptual_loss(loss) -> Optional["PerceptualLoss"]:
    """The ``sd.loss`` pixel terms as a frozen module (None when all are 0)."""
    from ...metrics.losses import PerceptualLoss, PerceptualWeights

    weights = PerceptualWeights(l1=loss.l1, lpips=loss.lpips, dists=loss.dists)
    return PerceptualLoss(weights, loss.weights_dir) if weights.any else None


class RestorationTrainer(TrainTask):
    """``task: restoration``."""

    def __init__(self, opt, data: bool = True):
        """``data=False`` builds the model only (``export``: no dataset is read)."""
        self.opt = opt
        if opt.sd.base is None:
            raise ValueError("sd.base is required: the path of a Stable Diffusion folder in diffusers format "
                             "(unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
        self.backbone = SDBackbone.load(opt.sd.base)
        self.sd = self.backbone.components
        self.daclip = load_daclip(opt.daclip.model, opt.daclip.pretrained, opt.daclip.adapter,
                                  seed=opt.train.manual_seed).eval()
        self.daclip.requires_grad_(False)
        self.model = build_restoration_model(opt, self.sd, self.daclip, seed=opt.train.manual_seed)
        self.config = self.model.config
        self.perceptual = _perceptual_loss(opt.sd.loss)  # before any data: a missing weight fails at start-up
        if opt.runtime.gradient_checkpointing:
            self.sd.unet.enable_gradient_checkpointing()
        self.cached: Optional[LatentCache] = None
        if data:
            self._build_datasets(opt)

    def _build_datasets(self, opt) -> None:
        """The train split (centre-cropped once when cached), the val split and the fusion head's calib split."""
        self.train_block = next(d for d in opt.datasets.values() if d.phase == "train")
        vae_factor = self.backbone.vae_factor
        patch = self.train_block.patch_size
        if not patch or patch % vae_factor:
            raise ValueError(f"datasets.{self.train_block.phase}.patch_size must be set to a multiple of {vae_factor} "
                             f"(the VAE's downsampling factor), got {patch}")
        centre = opt.runtime.cache and opt.runtime.cache_crops == 1
        if centre and (self.train_block.use_flip or self.train_block.use_rot):
            logger.warning("runtime.cache with cache_crops: 1: flips and rotations are off; each image is "
                           "centre-cropped to %d once (cache_crops: N caches N random crops)", patch)
        clip_size, seed = self.daclip.image_size, opt.train.manual_seed  # seed: GT-only blocks' degradations
        self._train = restoration_dataset(self.train_block, opt.distortion, train=True, seed=seed,
                                          crop="center" if centre else "random", clip_size=clip_size)
        self.val_block = next((d for d in opt.datasets.values() if d.phase == "val"), None)
        self._val = restoration_dataset(self.val_block, opt.distortion, train=False, clip_size=clip_size,
                                        seed=seed) if self.val_block else None
        self._calib = self._calib_dataset(opt, patch)

    def _calib_dataset(self, opt, patch: int):
        """Pairs only the fusion head is fitted on, centre-cropped like the cached training images."""
        block = next((d for d in opt.datasets.values() if d.phase == "calib"), None)
        if block is None:
            return None
        return restoration_dataset(dataclasses.replace(block, patch_size=block.patch_size or patch), opt.distortion,
                                   train=True, crop="center", clip_size=self.daclip.image_size,
                                   seed=opt.train.manual_seed)

    # ------------------------------------------------------------------------------ setup
    def setup(self, accelerator) -> None:
        device = accelerator.device
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        # frozen weights in the mixed precision's dtype, trainable ones in fp32 (diffusers' LoRA scripts); the
        # VAE only under bf16 (SD's VAE overflows in fp16) and the fusion head never (it is fitted in fp32)
        self.sd.vae.to(device, dtype=dtype if dtype == torch.bfloat16 else torch.float32)
        if self.perceptual is not None:
            self.perceptual.to(device)
        for m in (*self.backbone.text_encoders, self.daclip):
            m.to(device, dtype=dtype)
        self.model.to(device)
        # the fusion head stays fp32, and a LoRA'd VAE encoder (part of the model) keeps the VAE's dtype
        keep = [m for m in (self.model.fusion, self.model.lq_encoder) if m is not None]
        _cast_frozen(self.model, dtype, keep=nn.ModuleList(keep))
        self.device, self.dtype = device, dtype
        self.precision = {"fp16": "fp16", "bf16": "bf16"}.get(accelerator.mixed_precision, "fp32")
        reserved = self.config.context_slots
        with torch.no_grad():  # the prompt's (and the empty prompt's) context, and pooled text for SDXL
            (self.prompt_hidden, self.prompt_pooled), (self.empty_hidden, self.empty_pooled) = (
                tuple(None if t is None else t.float() for t in self.backbone.encode_text([p], reserved))
                for p in (self.config.prompt, ""))
        if self.opt.runtime.cache:
            self.cached = self._build_cache(accelerator)

    @torch.no_grad()
    def frozen_features(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """VAE latents of GT and LQ and DA-CLIP embeddings of the LQ: the frozen models' work."""
        image_emb, degra_emb = self.daclip.encode_image(batch["LQ_clip"].to(self.device, self.dtype), control=True)
        gt, lq = (batch[k].to(self.device, torch.float32) for k in ("GT", "LQ"))
        out = {"gt": gt} if self._decodes else {}  # the pixel losses' target
        encoder = self.model.lq_encoder
        if encoder is None:
            out["z_lq"] = self.backbone.encode_latents(lq).float()
        else:  # the LQ latent is learned (VAE-encoder LoRA): the step encodes its pixels
            out["lq"] = lq
        with adapters_disabled(encoder) if encoder is not None else contextlib.nullcontext():
            out["z_gt"] = self.backbone.encode_latents(gt).float()  # the target: the frozen encoder's latent
        return {**out, "image_emb": image_emb.float(), "degra_emb": degra_emb.float()}

    def _build_cache(self, accelerator) -> LatentCache:
        """The frozen models' work on every training sample, on disk (``runtime.cache_dir``): the centre crop of
        each image, or ``runtime.cache_crops`` seeded random crops of it (sample ``i * N + j`` is crop ``j`` of
        image ``i``). Built by the main process for the samples it lacks, read by every process, reused by later
        runs."""
        block, rt = self.train_block, self.opt.runtime
        n, seed = rt.cache_crops, self.opt.train.manual_seed
        vae_dtype = next(self.sd.vae.parameters()).dtype
        folder = Path(rt.cache_dir or Path(self.opt.path.root) / "cache" / "latents").expanduser() / fingerprint(
            Path(self.opt.sd.base).resolve(), self.opt.daclip.model, self.opt.daclip.pretrained,
            self.opt.daclip.adapter, self.daclip.image_size, self.dtype, vae_dtype, self._decodes,
            self.model.lq_encoder is not None)
        crops = ["center"] if n == 1 else [("random", seed, j, block.use_flip, block.use_rot) for j in range(n)]
        keys = [sample_key([p.gt] + ([p.lq] if p.lq is not None else []), block.patch_size, crop,
                           self._train.seed if p.lq is None else None) for p in self._train.pairs for crop in crops]
        if accelerator.is_main_process:
            LatentCache.build(folder, keys, lambda idx: self.frozen_features(
                torch.utils.data.default_collate([self._cache_sample(s, n, seed) for s in idx])))
        accelerator.wait_for_everyone()
        return LatentCache(folder, keys, [p.degradation for p in self._train.pairs for _ in crops])

    def _cache_sample(self, sample: int, n: int, seed: int) -> Dict[str, Any]:
        """Crop ``sample % n`` of image ``sample // n``: the centre crop of a centre-cropped dataset, else its
        random crop, flips and rotation seeded by ``(seed, image, crop)``, so the cache (and the fusion head's
        fit) holds the same crops whoever builds it."""
        image, crop = divmod(sample, n)
        if self._train.augment.crop == "center":
            return self._train[image]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(per_sample_generators(seed, crop, [image])[0].initial_seed())
            return self._train[image]

    def train_dataset(self) -> Dataset:
        return self.cached if self.cached is not None else self._train

    # ---------------------------------------------------------------------------- dry run
    def parts(self, half: torch.dtype) -> Dict[str, Tuple[nn.Module, torch.dtype]]:
        vae_dtype, v = half if half == torch.bfloat16 else torch.float32, self.sd.vae
        # a LoRA'd VAE encoder is part of the model: the VAE entry holds the rest of the VAE, so nothing counts twice
        vae = v if self.model.lq_encoder is None else nn.ModuleList(
            [m for m in (v.decoder, v.quant_conv, v.post_quant_conv) if m is not None])
        out = {"UNet (LoRA, DA-CLIP paths, head)": (self.model, half), "VAE": (vae, vae_dtype),
               **{f"text encoder{' ' + str(i + 1) if i else ''}": (m, half)
                  for i, m in enumerate(self.backbone.text_encoders)},
               "DA-CLIP": (self.daclip, half)}  # as setup() keeps them
        if self.perceptual is not None:
            out["perceptual loss"] = (self.perceptual, torch.float32)
        return out

    def sampling_groups(self) -> Optional[List[List[int]]]:
        data = self.train_dataset()
        labels = data.labels if isinstance(data, LatentCache) else [p.degradation for p in self._train.pairs]
        return degradation_groups(self.train_block, labels)

    def composition(self) -> Dict[str, Dict[str, int]]:
        from collections import Counter

        sets = {"train": self._train, "val": self._val, "calib": self._calib}
        return {k: dict(Counter(p.degradation or "all" for p in d.pairs)) for k, d in sets.items() if d is not None}

    def checkpointed_blocks(self) -> List[nn.Module]:
        unet = self.sd.unet
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def gradient_checkpointing(self, on: bool) -> None:
        (self.sd.unet.enable_gradient_checkpointing if on else self.sd.unet.disable_gradient_checkpointing)()

    def memory_probe(self, batch_size: int):
        """One training step's forward on the meta device, from cached-latent inputs (the frozen models' encodes
        run without gradients: they save nothing for the backward pass)."""
        meta, p, f = torch.device("meta"), self.train_block.patch_size, self.backbone.vae_factor
        with torch.no_grad():
            hidden, pooled = self.backbone.encode_text([self.config.prompt], self.config.context_slots)
        for module, _ in self.parts(torch.float32).values():
            module.to(meta)
        self.prompt_hidden = self.empty_hidden = hidden.float().to(meta)
        self.prompt_pooled = self.empty_pooled = None if pooled is None else pooled.float().to(meta)
        self.device, self.dtype, self.step, self.seed = meta, torch.float32, 0, 0
        z = (batch_size, self.config.latent_channels, p // f, p // f)
        batch = {"z_gt": torch.empty(z, device=meta), "z_lq": torch.empty(z, device=meta),
                 "image_emb": torch.empty(batch_size, self.config.embed_dim, device=meta),
                 "degra_emb": torch.empty(batch_size, self.config.embed_dim, device=meta),
                 "_index": torch.arange(batch_size)}
        if self._decodes:
            batch["gt"] = torch.empty(batch_size, 3, p, p, device=meta)
        if self.model.lq_encoder is not None:  # the step encodes the LQ through the LoRA'd encoder
            batch["lq"] = torch.empty(batch_size, 3, p, p, device=meta)
            del batch["z_lq"]
        self.model.train()
        return lambda: self.training_step(self.model, batch)

    # ------------------------------------------------------------------------------- step
    def training_step(self, model, batch) -> Dict[str, torch.Tensor]:
        feats = batch if "z_gt" in batch else self.frozen_features(batch)
        z_gt = feats["z_gt"]
        z_lq = feats["z_lq"] if "z_lq" in feats else self.backbone.encode(feats["lq"].to(z_gt.device)).float()
        rt, cond = self.opt.runtime, self.opt.sd.conditioning
        device = z_gt.device
        sched = self.sd.scheduler
        # Per-sample draws keyed by (seed, step, sample index): a run's trajectory does not depend on the
        # number of processes the global batch is split over.
        gens = per_sample_generators(self.seed, self.step, batch["_index"].tolist())
        keep = lambda p: (per_sample_rand(gens, device) >= p).float()  # noqa: E731
        keep_text = keep(cond.drop_text).view(-1, 1, 1)
        text = keep_text * self.prompt_hidden + (1 - keep_text) * self.empty_hidden
        pooled = None if self.prompt_pooled is None else \
            keep_text[:, 0] * self.prompt_pooled + (1 - keep_text[:, 0]) * self.empty_pooled
        if self.config.objective == "one_step":
            # the LQ latent read as x_t at one_step_t; the UNet's x0 is the restored latent. Loss: per-image
            # log-MSE (mean PSNR in latent space), so mild degradations weigh as much as severe ones.
            conditions = self._conditions(feats, z_lq, keep(cond.drop_daclip), keep(cond.drop_lq))
            x0 = one_step(sched, z_lq, self.config.one_step_t, self.config.one_step_input,
                          lambda noisy, t: model(noisy, t, text, conditions,
                                                 **self.backbone.unet_kwargs(noisy, pooled)))
            return self._one_step_loss(x0, z_gt, feats)
        noise = per_sample_noise(gens, z_gt.shape[1:], device, rt.noise_offset)
        t = per_sample_randint(gens, sched.config.num_train_timesteps, device)
        noisy = sched.add_noise(z_gt, noise, t)
        if cond.lq_start:
            # LQ-start samples: x_t noised from the LQ latent, as `strength < 1` sampling starts; the target is
            # the noise that puts x_t on the GT trajectory, so one step from it lands on the restored image.
            lq_start = (1 - keep(cond.lq_start)).view(-1, 1, 1, 1)
            from_lq = sched.add_noise(z_lq, noise, t)
            alpha = alpha_bar(sched, t, device)
            noise = lq_start * (from_lq - alpha.sqrt() * z_gt) / (1 - alpha).sqrt() + (1 - lq_start) * noise
            noisy = lq_start * from_lq + (1 - lq_start) * noisy
            # that target grows like sqrt(snr) * (z_lq - z_gt) at low noise: weight those samples by min(1, 1/snr)
            # (their x0-space error there), or they dominate every batch
            snr = alpha / (1 - alpha)
            weights = (lq_start * torch.clamp(1 / snr, max=1.0) + (1 - lq_start)).view(-1)
        else:
            weights = None
        target = diffusion_target(sched, z_gt, noise, t)
        conditions = self._conditions(feats, z_lq, keep(cond.drop_daclip), keep(cond.drop_lq))
        pred = model(noisy, t, text, conditions, **self.backbone.unet_kwargs(noisy, pooled))
        return {"loss": diffusion_loss(sched, pred, target, t, rt.snr_gamma, weights)}

    @staticmethod
    def _conditions(feats: Dict[str, torch.Tensor], z_lq: torch.Tensor, keep_daclip: Optional[torch.Tensor] = None,
                    keep_lq: Optional[torch.Tensor] = None) -> Conditions:
        """A batch's conditions: its DA-CLIP embeddings and LQ latent, with the per-sample keep draws."""
        return Conditions(image=feats["image_emb"], degradation=feats["degra_emb"], lq_latent=z_lq,
                          keep_daclip=keep_daclip, keep_lq=keep_lq)

    @property
    def _decodes(self) -> bool:
        """The one-step loss decodes the restored latent (pixel-space MSE or any ``sd.loss`` pixel term)."""
        return self.opt.sd.one_step_space == "pixel" or getattr(self, "perceptual", None) is not None

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        if self.opt.sd.loss.checkpoint_decoder and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.backbone.decode, x0, use_reentrant=False)
        return self.backbone.decode(x0)

    def _one_step_loss(self, x0: torch.Tensor, z_gt: torch.Tensor, feats: Dict[str, torch.Tensor]
                       ) -> Dict[str, torch.Tensor]:
        """``sd.one_step_loss`` per image in ``sd.one_step_space`` (averaged over the batch, weighted by
        ``sd.loss.one_step``) plus the ``sd.loss`` pixel terms on the decoded image."""
        s = self.opt.sd
        decoded = self._decode(x0) if self._decodes else None
        gt = feats["gt"].to(x0.device).float() if decoded is not None else None
        if s.one_step_space == "pixel":  # through the frozen decoder, against the GT image
            mse = (decoded - gt).pow(2).mean((1, 2, 3))
        else:
            mse = (x0 - z_gt.float()).pow(2).mean((1, 2, 3))
        per_image = {"log_mse": lambda: torch.log(mse + 1e-6), "rmse": lambda: (mse + 1e-8).sqrt(),
                     "mse": lambda: mse}[s.one_step_loss]()
        terms = self.perceptual(decoded.clamp(0, 1), gt) if self.perceptual is not None else {}
        loss = s.loss.one_step * per_image.mean() + sum(terms.values())
        return {"loss": loss, "mse": mse.mean().detach(), **{k: v.detach() for k, v in terms.items()}}

    # ------------------------------------------------------------------------- validation
    def pipeline(self) -> RestorationPipeline:
        return RestorationPipeline(self.backbone, self.model, self.daclip,
                                   precision=getattr(self, "precision", "fp32"))

    best_metric = "psnr"  # the mean over degradations

    def validation_indices(self) -> List[int]:
        """The first ``datasets.val.n_per_degradation`` images of each degradation (the same every time), in
        the val set's order of degradations."""
        per = self.val_block.n_per_degradation
        taken: Dict[str, List[int]] = {}
        for i, pair in enumerate(self._val.pairs):
            chosen = taken.setdefault(pair.degradation, [])
            if len(chosen) < per:
                chosen.append(i)
        return [i for indices in taken.values() for i in indices]

    def validate(self, step: int, out_dir: Path) -> Dict[str, float]:
        """PSNR/SSIM per degradation (``psnr/<degradation>``) and their means over degradations (``psnr``,
        ``ssim``); the LQ | restored | GT grid goes to ``val_images/<step>.png`` and the trackers."""
        if self._val is None:
            return {}
        pipe, s = self.pipeline(), self.opt.sampling
        rows: List[np.ndarray] = []
        per: Dict[str, List[Dict[str, float]]] = {}
        for i in self.validation_indices():
            sample = self._val[i]
            lq, r, gt = restore_sample(pipe, sample, s)
            per.setdefault(self._val.pairs[i].degradation or "all", []).append(image_metrics(r, gt, s.crop_border))
            rows.append(np.concatenate([lq, r, gt], axis=1))
        grid = np.concatenate(_same_width(rows), axis=0)
        write_image(Path(self.opt.path.val_images) / f"{step:08d}.png", grid)
        self.validation_images = {"grid": np.clip(grid, 0, 1)}
        metrics: Dict[str, float] = {}
        for deg, scores in per.items():
            for k in ("psnr", "ssim"):
                metrics[f"{k}/{deg}"] = float(np.mean([m[k] for m in scores]))
        for k in ("psnr", "ssim"):
            metrics[k] = float(np.mean([metrics[f"{k}/{deg}"] for deg in per]))
        return metrics

    @torch.no_grad()
    def fusion_batches(self, size: int = 32) -> Iterator[Dict[str, torch.Tensor]]:
        """LQ, GT, decodes and embeddings of up to ``sd.fusion_images`` training images (a seeded subset) and
        of every ``datasets.calib`` image, ``size`` images at a time (``decoded_lq`` only for a head that reads
        it); sets ``fusion_counts``."""
        pipe = self.pipeline()
        limit, seed = self.opt.sd.fusion_images, self.opt.train.manual_seed
        crops = self.opt.runtime.cache_crops if self.cached is not None else 1
        samples = len(self._train) * crops  # the training samples: each image's crop(s), as the cache holds them
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed))
        sources = [(lambda j: self._cache_sample(j, crops, seed), order[:limit].tolist(), self.cached)]
        if self._calib is not None:
            sources.append((self._calib.__getitem__, list(range(len(self._calib))), None))
        self.fusion_counts = {"train": min(limit, samples), "calib": 0 if self._calib is None else len(self._calib)}
        for sample, indices, cached in sources:
            for i in range(0, len(indices), size):
                index = indices[i:i + size]
                batch = [sample(j) for j in index]
                lq = torch.stack([s["LQ"] for s in batch]).to(self.device)
                if cached is not None and self.model.lq_encoder is None:  # the frozen models' work is cached
                    z_lq, image_emb, degra_emb = (t.to(self.device) for t in cached.take(
                        index, ("z_lq", "image_emb", "degra_emb")).values())
                else:
                    z_lq = self.backbone.encode_latents(lq)
                    with pipe.autocast():
                        image_emb, degra_emb = pipe.daclip_embeddings(lq)
                restored = self._restore_latents(pipe, z_lq, image_emb, degra_emb)
                out = {"lq": lq, "gt": torch.stack([s["GT"] for s in batch]), "image_emb": image_emb,
                       "degra_emb": degra_emb, "decoded": self.backbone.decode_latents(restored)}
                if self.config.fusion_decoded_lq:  # else the head reads the LQ itself: no second decode
                    out["decoded_lq"] = self.backbone.decode_latents(z_lq)
                yield out

    def _fusion_data(self) -> Dict[str, torch.Tensor]:
        """:func:`~daclip_lora.restoration.fusion.fusion_fit_data` of every :meth:`fusion_batches` batch,
        concatenated: the decodes are dropped batch by batch, so memory does not grow with ``sd.fusion_images``."""
        parts: Dict[str, List[torch.Tensor]] = {}
        for b in self.fusion_batches():
            data = fusion_fit_data(self.model.fusion, b["lq"], b["decoded"], b.get("decoded_lq"), b["gt"],
                                   b["degra_emb"])
            for k, v in data.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def _restore_latents(self, pipe: RestorationPipeline, z_lq, image_emb, degra_emb) -> torch.Tensor:
        """The model's restored latents for the fusion fit (the one-step objective's single UNet call)."""
        if self.config.objective != "one_step":
            raise ValueError("sd.fusion needs sd.objective: one_step")
        text = self.prompt_hidden.expand(z_lq.shape[0], -1, -1).to(self.device)
        pooled = None if self.prompt_pooled is None else self.prompt_pooled.to(self.device)
        conditions = self._conditions({"image_emb": image_emb.float(), "degra_emb": degra_emb.float()}, z_lq)

        def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with pipe.autocast():
                return self.model.denoise(noisy, t, text, conditions, **self.backbone.unet_kwargs(noisy, pooled))

        return one_step(self.sd.scheduler, z_lq, self.config.one_step_t, self.config.one_step_input, predict)

    def fit_fusion(self) -> Dict[str, float]:
        """Fit the fusion head on the decodes (after the LoRA) of training and calibration images; returns their
        PSNRs."""
        was_training = self.model.training
        self.model.eval()
        data = self._fusion_data()
        with torch.enable_grad():
            report = fit_fusion_head(self.model.fusion, data, seed=self.opt.train.manual_seed)
        self.model.train(was_training)
        logger.info("fusion head fitted on %d training + %d calibration images: PSNR LQ %.2f, LQ + latent "
                    "correction %.2f, fused %.2f dB", self.fusion_counts["train"], self.fusion_counts["calib"],
                    report["psnr_lq"], report["psnr_residual"], report["psnr_fused"])
        self.fusion_report = report
        return report

    def export(self, out_dir: Path) -> Path:
        """The restoration folder of the current weights (the fusion head as it is: fitted or not)."""
        return save_restoration(self.model, Path(out_dir), backbone=self.backbone)

    def finish_training(self) -> None:
        """Fit the fusion head on the trained UNet (``sd.fusion``)."""
        if self.model.fusion is not None:
            self.fit_fusion()

    def save_outputs(self, out_dir: Path) -> None:
        path = self.export(Path(out_dir) / "restoration")
        logger.info("restoration LoRA and extras saved to %s", path)


def _cast_frozen(model: nn.Module, dtype: torch.dtype, keep: Optional[nn.Module] = None) -> None:
    """Frozen parameters to ``dtype``, but those of ``keep`` and of norm layers (tiny; CPU kernels want fp32
    norm parameters whatever the input's dtype, and diffusers keeps them fp32 too)."""
    if dtype == torch.float32:
        return
    skip = {id(p) for p in keep.parameters()} if keep is not None else set()
    for module in model.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            skip.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if not p.requires_grad and id(p) not in skip:
            p.data = p.data.to(dtype)


def _same_width(rows: List[np.ndarray]) -> List[np.ndarray]:
    """Grid rows padded (black, right) to the widest one, for validation images of several sizes."""
    width = max(r.shape[1] for r in rows)
    return [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]


# ------------------------------------------------------------------------- sampling options
def sampling_kwargs(sampling) -> Dict[str, Any]:
    """:meth:`RestorationPipeline.__call__` arguments from a ``sampling`` options block."""
    return {"steps": sampling.steps, "scheduler": sampling.scheduler, "guidance_scale": sampling.guidance_scale,
            "strength": sampling.strength, "seed": sampling.seed, "tile_size": sampling.tile_size,
            "tile_overlap": sampling.tile_overlap, "color_fix": sampling.color_fix}


def restore_sample(pipe: RestorationPipeline, sample: Dict[str, Any], sampling) -> tuple:
    """``(lq, restored, gt)`` as ``(H, W, 3)`` arrays in [0, 1], sampled with the ``sampling`` options."""
    restored = pipe(sample["LQ"][None], **sampling_kwargs(sampling))[0]
    return tuple(x.permute(1, 2, 0).numpy() for x in (sample["LQ"], restored, sample["GT"]))
