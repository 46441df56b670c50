"""The strict option blocks (``daclip``, ``controller``, ``sd``, ``runtime``, ``sampling``), one dataclass per task
where the tasks read different keys. A task declares its blocks (:class:`~daclip_lora.training.tasks.TaskSpec`);
the keys it reads are derived from them, and an unknown key is an error naming the closest valid one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from .._utils.lora import LoraSpec

__all__ = ["ConditioningOptions", "ControllerOptions", "DaclipModelOptions", "DaclipOptions",
           "DiffusionRuntimeOptions", "GenerationOptions", "LoraOptions", "LossOptions", "RestorationRuntimeOptions",
           "RestorationSDOptions", "RuntimeOptions", "SDOptions", "SamplingOptions", "Text2ImageSDOptions",
           "block_keys", "input_path"]


def input_path() -> Any:
    """An input-path field: ``~`` is expanded; existence is checked when ``check_paths``."""
    return field(default=None, metadata={"path": True})


_path = input_path

#: The LoRA block (``controller.lora``, ``sd.lora``, ``sd.text_encoder_lora``): one typed spec everywhere.
LoraOptions = LoraSpec


@dataclass
class DaclipModelOptions:
    """``daclip`` for text2image: the DA-CLIP model that scores validation images (CLIP score)."""

    model: str = "daclip_ViT-B-32"
    pretrained: Optional[str] = _path()  # falls back to path.daclip


@dataclass
class DaclipOptions(DaclipModelOptions):
    """``daclip`` for restoration and controller training: the conditioning model, or the one whose controller is
    trained, with a controller LoRA to apply."""

    adapter: Optional[str] = _path()  # controller LoRA folder to apply


@dataclass
class ControllerOptions:
    """Controller-LoRA training (``task: controller``)."""

    lora: LoraOptions = field(default_factory=LoraOptions)
    zero_modules: Literal["train", "lora", "frozen"] = "lora"
    train_logit_scale: bool = True
    loss: Literal["label_aware", "reference"] = "label_aware"
    caption_weight: float = 1.0


@dataclass
class ConditioningOptions:
    image_context: bool = True
    degra_context: bool = True
    num_tokens: int = 4
    lq_latent: bool = True
    drop_text: float = 0.05
    drop_daclip: float = 0.05
    drop_lq: float = 0.05
    lq_start: float = 0.0  # share of training samples noised from the LQ latent (for strength < 1 sampling)
    time_embedding: bool = False  # DA-CLIP's degradation embedding added to the UNet's time embedding
    modulated_lora: bool = False  # every UNet LoRA layer computes B·M(e)·A, M predicted from that embedding
    output_norm: bool = False  # the UNet's last norm scaled and shifted from that embedding and its input's stats
    #: further registered conditioning paths (restoration.conditioning.PATHS) by name, with their options
    paths: Dict[str, Optional[Dict[str, Any]]] = field(default_factory=dict)


@dataclass
class LossOptions:
    """``sd.loss``: pixel-space terms added to the one-step loss, on the restored latent decoded by the frozen
    VAE decoder (OSEDiff: MSE + LPIPS; S3Diff: MSE + LPIPS + GAN). LPIPS/DISTS are pyiqa's (the metrics extra)."""

    one_step: float = 1.0  # weight of sd.one_step_loss (in sd.one_step_space)
    l1: float = 0.0
    lpips: float = 0.0
    dists: float = 0.0
    weights_dir: Optional[str] = _path()  # torch hub folder holding pyiqa/ and checkpoints/ (default: $TORCH_HOME/hub)
    checkpoint_decoder: bool = False  # recompute the decoder's activations in the backward pass (memory)

    def __post_init__(self) -> None:
        for key in ("one_step", "l1", "lpips", "dists"):
            if getattr(self, key) < 0:
                raise ValueError(f"sd.loss.{key} must be >= 0, got {getattr(self, key)}")
        if not (self.one_step or self.l1 or self.lpips or self.dists):
            raise ValueError("sd.loss: every weight is 0; give one_step, l1, lpips or dists a positive weight")


@dataclass
class SDOptions:
    """``sd`` of every Stable Diffusion task: the base model (a diffusers folder) and the UNet's LoRA."""

    base: Optional[str] = _path()
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class RestorationSDOptions(SDOptions):
    """``sd`` for ``task: restoration``: the conditioning, the objective and what is trained beside the LoRA."""

    prompt: str = ""
    conditioning: ConditioningOptions = field(default_factory=ConditioningOptions)
    #: "diffusion" (epsilon/v training, sampled with steps/strength) or "one_step" (the UNet maps the LQ latent to
    #: the restored latent in one call at timestep one_step_t, trained on a per-image log-MSE)
    objective: Literal["diffusion", "one_step"] = "diffusion"
    one_step_t: int = 50
    #: one_step: the UNet's input at one_step_t: "scaled" (the LQ latent read as x_t, sqrt(abar_t) z_LQ) or "raw"
    #: (z_LQ as it is, as OSEDiff feeds it at t = 999)
    one_step_input: Literal["scaled", "raw"] = "scaled"
    #: LoRA on the VAE encoder (OSEDiff, S3Diff): the LQ latent is then learned too; the GT's latent, the target,
    #: stays the frozen encoder's. None: the encoder is frozen
    vae_encoder_lora: Optional[LoraOptions] = None
    #: train the UNet's first convolution in full (its base weights, next to the LQ channels' new ones), as OSEDiff
    #: does; saved with the model's other weights
    train_conv_in: bool = False
    #: one_step: the per-image loss, averaged over the batch: "log_mse" (mean PSNR: mild and severe degradations
    #: weigh alike), "rmse" (between log-MSE and MSE) or "mse"
    one_step_loss: Literal["log_mse", "rmse", "mse"] = "log_mse"
    #: one_step: where it is taken: "latent" (against the GT latent) or "pixel" (the restored latent decoded by the
    #: frozen VAE decoder, against the GT image, as OSEDiff and S3Diff train)
    one_step_space: Literal["latent", "pixel"] = "latent"
    #: one_step: extra pixel-space terms (L1, LPIPS, DISTS) through the frozen decoder
    loss: LossOptions = field(default_factory=LossOptions)
    #: fit the degradation-aware output fusion head after the LoRA (restoration.fusion.FusionHead)
    fusion: bool = False
    #: fusion: the head also blends D(z_LQ), the decoded LQ latent (a second VAE decode per image); false: the LQ
    #: image stands in for it, one decode (faster; see docs/benchmarks.md for the PSNR it costs)
    fusion_decoded_lq: bool = True
    #: training images the fusion head is fitted on, plus every image of a ``datasets.calib`` split (pairs the LoRA
    #: and the controller never saw: their DA-CLIP embeddings are as good as on new images)
    fusion_images: int = 1024


@dataclass
class Text2ImageSDOptions(SDOptions):
    """``sd`` for ``task: text2image``: plain SD LoRA fine-tuning on captioned images."""

    text_encoder_lora: Optional[LoraOptions] = None
    text_encoder_lr: Optional[float] = None
    resolution: int = 512
    validation_prompts: Optional[str] = _path()  # one prompt per line
    clip_score: bool = True  # CLIP score of validation images with daclip.model


@dataclass
class RuntimeOptions:
    """``runtime`` of every task: accelerate and performance settings the engine reads."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    max_grad_norm: Optional[float] = 1.0
    weight_decay: float = 1e-2
    ema_decay: Optional[float] = None
    device: Optional[str] = None  # None: accelerate's choice (GPU if available)


@dataclass
class DiffusionRuntimeOptions(RuntimeOptions):
    """``runtime`` of the diffusion trainers (text2image): the noise schedule's training knobs too."""

    snr_gamma: Optional[float] = None
    noise_offset: float = 0.0


@dataclass
class RestorationRuntimeOptions(DiffusionRuntimeOptions):
    """``runtime`` for ``task: restoration``: the latent cache too."""

    cache: bool = False  # the frozen models' work on the training crops, once, on disk (training/latent_cache.py)
    #: cached crops per training image: 1 the centre crop; N > 1 N seeded random crops (with the block's flips and
    #: rotations), each a sample of its own, so an epoch sees every image N times in different crops
    cache_crops: int = 1
    cache_dir: Optional[str] = None  # where the latent cache lives (default <root>/cache/latents; shared by runs)

    def __post_init__(self) -> None:
        if self.cache_crops < 1:
            raise ValueError(f"runtime.cache_crops must be at least 1 (1: the centre crop; N: N random crops per "
                             f"image), got {self.cache_crops}")


@dataclass
class GenerationOptions:
    """``sampling`` for text2image validation images."""

    scheduler: str = "ddim"  # ddim, dpm++ or euler; case-insensitive, aliases such as DPMPP_2M accepted
    steps: int = 50
    guidance_scale: float = 1.0
    seed: int = 0


@dataclass
class SamplingOptions(GenerationOptions):
    """``sampling`` for restoration (validation and ``test``)."""

    strength: float = 1.0
    merge_lora: bool = True
    crop_border: int = 0
    tile_size: Optional[int] = None  # pixels; None: tile images larger than the base's native size; 0: never
    tile_overlap: Optional[int] = None  # pixels; None: a quarter of the tile
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the UNet and DA-CLIP at sampling
    color_fix: Literal["none", "wavelet", "adain", "auto"] = "none"  # the LQ's colours back (restoration.color_fix)
    lora_scale: float = 1.0  # the UNet LoRA's strength at inference: 0 the base UNet (fidelity), 1 as trained
    metrics: Optional[List[str]] = None  # test: also score the restored images with these `evaluate` metrics


def block_keys(name: str, cls: type) -> tuple:
    """The dotted keys of block ``name`` read through ``cls`` (a nested block's key covers its sub-keys)."""
    import dataclasses

    return tuple(f"{name}.{f.name}" for f in dataclasses.fields(cls) if f.name != "extra")
