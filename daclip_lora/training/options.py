"""UIR/BasicSR-style YAML options, loaded into typed dataclasses by a *pure* function.

:func:`load_options` reads a ``train.yml``/``test.yml`` file, validates it and derives the run folders.
It has no side effects: it sets no environment variables, creates no folders, starts no process
group and executes nothing from the file.

Two kinds of blocks:

* UIR blocks (``datasets``, ``path``, ``train``, ``logger`` and the top level) are *lenient*: the keys
  we use are typed and checked, every other key (``sde``, ``network_G``, ``train.is_weighted`` ...)
  is kept in ``extra`` and reported once in an informational log line.
* Our own blocks (``daclip``, ``controller``, ``sd``, ``runtime``, ``sampling``) are *strict*: an
  unknown key is an error that names the closest valid key. ``docs/options.md`` documents them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from .._utils.lora import LoraSpec
from .._utils.suggest import suggest
from ..data.degrade import DEGRADATIONS
from ..restoration.schedulers import SCHEDULERS, scheduler_name
from ._coerce import Context, OptionsError, build, parse_override_value, resolve_field
from .optimizers import optimizer_name
from .tasks import TASKS

logger = logging.getLogger(__name__)

__all__ = [
    "OptionsError",
    "Options",
    "DatasetOptions",
    "LoraOptions",
    "load_options",
    "parse_options",
    "apply_overrides",
    "options_to_dict",
    "DEGRADATIONS",
    "task_keys",
    "SCHEDULERS",
    "scheduler_name",
]



def _path() -> Any:
    """An input-path field: ``~`` is expanded; existence is checked when ``check_paths``."""
    return field(default=None, metadata={"path": True})


# ------------------------------------------------------------------------------ schema
#: The LoRA block (``controller.lora``, ``sd.lora``, ``sd.text_encoder_lora``): one typed spec everywhere.
LoraOptions = LoraSpec


@dataclass
class DatasetOptions:
    """One entry of ``datasets``; its ``phase`` comes from the key (``train``, ``val_2``, ``test1``)."""

    mode: Literal["LQGT", "MD", "GT", "CSV", "captions"] = "LQGT"
    name: str = ""
    phase: str = ""
    dataroot: Optional[str] = _path()  # MD root, or caption folder
    dataroot_GT: Optional[str] = _path()
    dataroot_LQ: Optional[str] = _path()
    csv: Optional[str] = _path()  # DA-CLIP CSV (tab-separated filepath, title)
    root: Optional[str] = _path()  # CSV: the folder its relative paths start from (else the CSV's folder, then cwd)
    pairing: Literal["auto", "name", "sorted"] = "auto"  # LQ/GT: by name, by sorted order (UIR), or auto
    scale: Optional[int] = None  # super-resolution pairs: the LQ is this many times smaller (upsampled to the GT)
    sampling: Literal["balanced", "proportional"] = "balanced"  # MD training draws: UIR's round-robin, or by size
    distortion: Optional[List[str]] = None  # MD: defaults to the top-level `distortion`
    use_shuffle: bool = True
    n_workers: int = 0
    batch_size: int = 1
    patch_size: Optional[int] = None
    use_flip: bool = False
    use_rot: bool = False
    color: Optional[str] = "RGB"
    small_images: Literal["pad", "reject"] = "pad"
    n_per_degradation: int = 2  # validation during training: the first N images of each degradation
    on_corrupt: Literal["error", "skip"] = "error"
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PathOptions:
    daclip: Optional[str] = _path()
    resume_state: Optional[str] = _path()  # a training_state/<step> folder, or "auto": the run's newest
    root: str = "."
    experiments_root: Optional[str] = None
    models: Optional[str] = None
    training_state: Optional[str] = None
    log: Optional[str] = None
    val_images: Optional[str] = None
    results_root: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainOptions:
    """The UIR ``train`` block keys we use (others are kept in ``extra`` and ignored)."""

    optimizer: str = "AdamW"  # AdamW, Adam, AdamW8bit (CUDA), Lion (bitsandbytes): training/optimizers.py
    lr_G: float = 1e-4
    lr_scheme: str = "cosine"
    beta1: float = 0.9
    beta2: float = 0.999
    niter: int = 1000
    warmup_iter: int = -1
    lr_steps: Optional[List[int]] = None
    lr_gamma: float = 0.5
    eta_min: float = 0.0
    manual_seed: int = 0
    val_freq: int = 500
    #: the validation value whose best keeps ``training_state/best``; None: the task's own (restoration: ``psnr``,
    #: the mean over degradations; controller: ``accuracy``; text2image: ``clip_score``)
    best_metric: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerOptions:
    print_freq: int = 100
    save_checkpoint_freq: int = 5000
    use_tb_logger: bool = False  # TensorBoard under <experiments_root>/tb_logger (UIR also has it at the top level)
    wandb: Optional[Dict[str, Any]] = None  # BasicSR's {project: ..., resume_id: ...}; needs wandb installed
    keep_checkpoints: int = 2  # the newest complete step checkpoints kept (besides training_state/best)
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DaclipOptions:
    """The DA-CLIP model: conditioning for restoration, or the model whose controller is trained."""

    model: str = "daclip_ViT-B-32"
    pretrained: Optional[str] = _path()  # falls back to path.daclip
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
    """Stable Diffusion base model (a diffusers folder) and what is trained on it."""

    base: Optional[str] = _path()
    prompt: str = ""
    lora: LoraOptions = field(default_factory=LoraOptions)
    text_encoder_lora: Optional[LoraOptions] = None
    text_encoder_lr: Optional[float] = None
    conditioning: ConditioningOptions = field(default_factory=ConditioningOptions)
    #: restoration: "diffusion" (epsilon/v training, sampled with steps/strength) or "one_step" (the UNet maps
    #: the LQ latent to the restored latent in one call at timestep one_step_t, trained on a per-image log-MSE)
    objective: Literal["diffusion", "one_step"] = "diffusion"
    one_step_t: int = 50
    #: restoration, one_step: the UNet's input at one_step_t: "scaled" (the LQ latent read as x_t,
    #: sqrt(abar_t) z_LQ) or "raw" (z_LQ as it is, as OSEDiff feeds it at t = 999)
    one_step_input: Literal["scaled", "raw"] = "scaled"
    #: restoration: LoRA on the VAE encoder (OSEDiff, S3Diff): the LQ latent is then learned too; the GT's
    #: latent, the target, stays the frozen encoder's. None: the encoder is frozen
    vae_encoder_lora: Optional[LoraOptions] = None
    #: restoration: train the UNet's first convolution in full (its base weights, next to the LQ channels'
    #: new ones), as OSEDiff does; saved with the model's other weights
    train_conv_in: bool = False
    #: restoration, one_step: the per-image loss, averaged over the batch: "log_mse" (mean PSNR: mild and severe
    #: degradations weigh alike), "rmse" (between log-MSE and MSE) or "mse"
    one_step_loss: Literal["log_mse", "rmse", "mse"] = "log_mse"
    #: restoration, one_step: where it is taken: "latent" (against the GT latent) or "pixel" (the restored latent
    #: decoded by the frozen VAE decoder, against the GT image, as OSEDiff and S3Diff train)
    one_step_space: Literal["latent", "pixel"] = "latent"
    #: restoration, one_step: extra pixel-space terms (L1, LPIPS, DISTS) through the frozen decoder
    loss: LossOptions = field(default_factory=LossOptions)
    #: restoration: fit the degradation-aware output fusion head after the LoRA (restoration.fusion.FusionHead)
    fusion: bool = False
    #: restoration, fusion: the head also blends D(z_LQ), the decoded LQ latent (a second VAE decode per image);
    #: false: the LQ image stands in for it, one decode (faster; see docs/benchmarks.md for the PSNR it costs)
    fusion_decoded_lq: bool = True
    #: training images the fusion head is fitted on, plus every image of a ``datasets.calib`` split (pairs
    #: the LoRA and the controller never saw: their DA-CLIP embeddings are as good as on new images)
    fusion_images: int = 1024
    resolution: int = 512
    validation_prompts: Optional[str] = _path()  # text2image: one prompt per line
    clip_score: bool = True  # text2image: CLIP score of validation images with daclip.model


@dataclass
class RuntimeOptions:
    """accelerate and performance settings shared by every trainer."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    max_grad_norm: Optional[float] = 1.0
    weight_decay: float = 1e-2
    cache: bool = False  # the frozen models' work on the training crops, once, on disk (training/latent_cache.py)
    #: cached crops per training image: 1 the centre crop; N > 1 N seeded random crops (with the block's flips and
    #: rotations), each a sample of its own, so an epoch sees every image N times in different crops
    cache_crops: int = 1
    cache_dir: Optional[str] = None  # where the latent cache lives (default <root>/cache/latents; shared by runs)
    ema_decay: Optional[float] = None
    snr_gamma: Optional[float] = None
    noise_offset: float = 0.0
    device: Optional[str] = None  # None: accelerate's choice (GPU if available)

    def __post_init__(self) -> None:
        if self.cache_crops < 1:
            raise ValueError(f"runtime.cache_crops must be at least 1 (1: the centre crop; N: N random crops per "
                             f"image), got {self.cache_crops}")


@dataclass
class SamplingOptions:
    """Restoration sampling (``test``)."""

    scheduler: str = "ddim"  # ddim, dpm++ or euler; case-insensitive, aliases such as DPMPP_2M accepted
    steps: int = 50
    guidance_scale: float = 1.0
    strength: float = 1.0
    seed: int = 0
    merge_lora: bool = True
    crop_border: int = 0
    tile_size: Optional[int] = None  # pixels; None: tile images larger than the base's native size; 0: never
    tile_overlap: Optional[int] = None  # pixels; None: a quarter of the tile
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the UNet and DA-CLIP at sampling
    color_fix: Literal["none", "wavelet", "adain", "auto"] = "none"  # the LQ's colours back (restoration.color_fix)
    lora_scale: float = 1.0  # the UNet LoRA's strength at inference: 0 the base UNet (fidelity), 1 as trained
    metrics: Optional[List[str]] = None  # test: also score the restored images with these `evaluate` metrics


@dataclass
class Options:
    """A whole options file. ``extra`` keeps top-level UIR keys we do not use (``sde``, ...)."""

    name: str
    is_train: bool = False
    use_tb_logger: Optional[bool] = None  # UIR's top-level switch; same as logger.use_tb_logger
    task: str = "restoration"  # a registered task (training.tasks.TASKS, checked when the file is read)
    suffix: Optional[str] = None
    model: Optional[str] = None
    distortion: List[str] = field(default_factory=list)
    gpu_ids: Optional[List[int]] = None
    datasets: Dict[str, DatasetOptions] = field(default_factory=dict)
    path: PathOptions = field(default_factory=PathOptions)
    train: Optional[TrainOptions] = None
    logger: LoggerOptions = field(default_factory=LoggerOptions)
    daclip: DaclipOptions = field(default_factory=DaclipOptions)
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    sd: SDOptions = field(default_factory=SDOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    extra: Dict[str, Any] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    source: Optional[str] = None


def task_keys(task: str) -> Tuple[str, ...]:
    """The keys of our own blocks that ``task`` reads (its :class:`~daclip_lora.training.tasks.TaskSpec`'s
    ``reads``; a prefix covers its sub-keys)."""
    return TASKS[task].reads


_STRICT = frozenset({LoraOptions, DaclipOptions, ControllerOptions, ConditioningOptions, SDOptions, RuntimeOptions,
                      SamplingOptions})
_PHASES = ("train", "val", "test", "calib")


# ------------------------------------------------------------------------------ loading
def _phase(key: str, source: str) -> str:
    phase = re.sub(r"(_?\d+)$", "", key.split("_")[0])
    if phase not in _PHASES:
        raise OptionsError(
            f"{source}: datasets.{key}: a dataset key must start with train, val, test or calib "
            f"(e.g. val_2, test1)."
            f"{suggest(phase, _PHASES)}"
        )
    return phase


def _read_yaml(path: Path) -> Dict[str, Any]:
    if path.is_dir():
        raise IsADirectoryError(f"options file {path} is a folder; pass a .yml file")
    if not path.is_file():
        raise FileNotFoundError(f"options file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OptionsError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); save "
                           f"the options file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise OptionsError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise OptionsError(f"{path}: YAML error: {e}") from None
    if not isinstance(data, dict):
        raise OptionsError(f"{path}: an options file must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` overrides to raw option data; values are typed by the schema."""
    for item in overrides:
        if "=" not in item:
            raise OptionsError(f"--opt {item!r}: expected key.sub=value (e.g. train.lr_G=2e-4)")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise OptionsError(f"--opt {item!r}: empty key")
        tp = resolve_field(Options, parts, _STRICT)
        value = yaml.safe_load(text) if tp is None else parse_override_value(text, tp)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise OptionsError(f"--opt {item!r}: {part!r} is not a mapping in the options file")
            node = child
        node[parts[-1]] = value
    return data


def parse_options(
    data: Dict[str, Any],
    is_train: bool,
    root: Union[str, Path] = ".",
    source: str = "<options>",
    check_paths: bool = True,
) -> Tuple[Options, List[str]]:
    """Build :class:`Options` from already-parsed YAML data. Returns ``(options, warnings)``."""
    data = dict(data)
    ctx = Context(source, _STRICT)
    datasets_raw = data.pop("datasets", None) or {}
    if not isinstance(datasets_raw, dict):
        raise ctx.error("datasets", f"expected a mapping of dataset blocks, got {datasets_raw!r}")
    data.pop("is_train", None)
    opt: Options = build(Options, data, "", ctx)
    opt.is_train = is_train
    if is_train and opt.train is None:
        opt.train = TrainOptions()
    for key, block in datasets_raw.items():
        ds: DatasetOptions = build(DatasetOptions, block, f"datasets.{key}", ctx)
        ds.phase = _phase(str(key), source)
        if ds.distortion is None and ds.mode in ("MD", "GT"):
            ds.distortion = list(opt.distortion)
        opt.datasets[str(key)] = ds
    _check_task_keys(opt, ctx)
    _derive_paths(opt, Path(root).expanduser())
    _expand_user(opt)
    _check_semantics(opt, ctx, check_paths)
    opt.ignored = ctx.ignored + _typed_but_unused(data, datasets_raw)
    opt.source = source
    return opt, ctx.warnings


def load_options(
    path: Union[str, Path],
    is_train: bool,
    root: Union[str, Path] = ".",
    overrides: Sequence[str] = (),
    check_paths: bool = True,
) -> Options:
    """Load a UIR-style ``train.yml``/``test.yml``; pure (no env, no folders, no code execution).

    Args:
        path: the YAML file.
        is_train: training (derives ``experiments/<name>/...``) or testing (``results/<name>``).
        root: folder under which the run folders are derived.
        overrides: ``key.sub=value`` strings (the CLI's ``--opt``), typed by the schema.
        check_paths: check that the input paths the run will read exist.

    Raises:
        FileNotFoundError: the options file does not exist.
        OptionsError: syntax error (with line number), unknown key in one of our blocks (with the
            closest valid key), wrong type, missing required key or path, or a path that does not exist.
    """
    path = Path(path).expanduser()
    data = apply_overrides(_read_yaml(path), overrides)
    opt, warnings = parse_options(data, is_train, root=root, source=str(path), check_paths=check_paths)
    for w in warnings:
        logger.warning("%s: %s", path, w)
    if opt.ignored:
        logger.warning("%s: keys read but not used by daclip_lora (kept, ignored): %s", path, ", ".join(opt.ignored))
    return opt


def _reads(task: str, key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in task_keys(task))


def _check_task_keys(opt: Options, ctx: Context) -> None:
    if opt.task not in TASKS:
        raise ctx.error("task", f"expected one of {', '.join(TASKS)}, got {opt.task!r}."
                                f"{suggest(str(opt.task), list(TASKS))} (training.tasks.register_task adds one)")
    for key in ctx.set_keys:
        if _reads(opt.task, key) or any(k.startswith(key + ".") for k in task_keys(opt.task)):
            continue
        readers = [t for t in TASKS if _reads(t, key)]
        hint = f" (it is read by task {' and '.join(readers)})" if readers else ""
        raise ctx.error(key, f"set, but task {opt.task} never reads it{hint}; remove it from the file")


def _derive_paths(opt: Options, root: Path) -> None:
    p = opt.path
    p.root = str(root)
    if opt.is_train:
        exp = root / "experiments" / opt.name
        p.experiments_root = str(exp)
        p.models, p.training_state = str(exp / "models"), str(exp / "training_state")
        p.log, p.val_images = str(exp), str(exp / "val_images")
    else:
        results = root / "results" / opt.name
        p.results_root = p.log = str(results)


def _path_fields(obj: Any, prefix: str) -> List[Tuple[str, Any, str, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path"):
            out.append((f"{prefix}{f.name}", obj, f.name, f))
        elif dataclasses.is_dataclass(value):
            out.extend(_path_fields(value, f"{prefix}{f.name}."))
    return out


def _all_path_fields(opt: Options) -> List[Tuple[str, Any, str, dataclasses.Field]]:
    fields = _path_fields(opt, "")
    for key, ds in opt.datasets.items():
        fields.extend(_path_fields(ds, f"datasets.{key}."))
    return fields


def _expand_user(opt: Options) -> None:
    for _, obj, name, _ in _all_path_fields(opt):
        value = getattr(obj, name)
        if value is not None and value != "auto":
            setattr(obj, name, str(Path(value).expanduser()))


_REQUIRED_BY_MODE = {"LQGT": ("dataroot_LQ", "dataroot_GT"), "MD": ("dataroot",), "GT": ("dataroot_GT",),
                     "CSV": ("csv",),
                     "captions": ("dataroot",)}


def _check_datasets(opt: Options, ctx: Context) -> None:
    for key, ds in opt.datasets.items():
        for name in _REQUIRED_BY_MODE[ds.mode]:
            if getattr(ds, name) is None:
                raise ctx.error(f"datasets.{key}.{name}", f"required for mode {ds.mode} but missing")
        if ds.mode in ("MD", "GT") and not ds.distortion:
            raise ctx.error(f"datasets.{key}", f"mode {ds.mode} needs degradation names: set top-level "
                                               f"`distortion: [...]`")
        if ds.scale is not None and ds.scale < 1:
            raise ctx.error(f"datasets.{key}.scale", f"must be at least 1, got {ds.scale}")
        if ds.batch_size < 1:
            raise ctx.error(f"datasets.{key}.batch_size", f"must be at least 1, got {ds.batch_size}")


def _check_splits(opt: Options, ctx: Context) -> None:
    if opt.is_train and not any(ds.phase == "train" for ds in opt.datasets.values()):
        raise ctx.error("datasets", "training needs a dataset whose key starts with 'train'")
    calib = [key for key, ds in opt.datasets.items() if ds.phase == "calib"]
    if calib and not (opt.task == "restoration" and opt.sd.fusion):
        raise ctx.error(f"datasets.{calib[0]}", "a calibration split is only used to fit the fusion head of a "
                                                "restoration run; set task: restoration and sd.fusion: true, or "
                                                "remove it")


def _check_sampling(opt: Options, ctx: Context) -> None:
    try:
        opt.sampling.scheduler = scheduler_name(opt.sampling.scheduler)
    except ValueError as e:
        raise ctx.error("sampling.scheduler", str(e)) from None
    s = opt.sampling
    for key, value, low in (("steps", s.steps, 1), ("tile_size", s.tile_size, 0), ("tile_overlap", s.tile_overlap, 0)):
        if value is not None and value < low:
            raise ctx.error(f"sampling.{key}", f"must be at least {low}, got {value}")
    if not 0 < s.strength <= 1:
        raise ctx.error("sampling.strength", f"must be in (0, 1], got {s.strength}")
    if s.tile_size and s.tile_overlap is not None and s.tile_overlap >= s.tile_size:
        raise ctx.error("sampling.tile_overlap", f"must be smaller than sampling.tile_size ({s.tile_size}), "
                                                 f"got {s.tile_overlap}")


def _check_paths_exist(opt: Options, ctx: Context) -> None:
    for dotted, obj, name, _ in _all_path_fields(opt):
        value = getattr(obj, name)
        if value is not None and not Path(value).exists() and not (dotted == "path.resume_state" and value == "auto"):
            raise ctx.error(dotted, f"path {value} does not exist (relative paths are taken from the current folder)")


#: UIR keys that are typed (and checked) but that nothing here reads: listed with the ignored ones at start
TYPED_BUT_UNUSED = ("model", "gpu_ids", "suffix")
TYPED_BUT_UNUSED_IN_DATASETS = ("name", "color")


def _typed_but_unused(data: Dict[str, Any], datasets: Dict[str, Any]) -> List[str]:
    keys = [k for k in TYPED_BUT_UNUSED if data.get(k) is not None]
    for name, block in datasets.items():
        if isinstance(block, dict):
            keys += [f"datasets.{name}.{k}" for k in TYPED_BUT_UNUSED_IN_DATASETS if block.get(k) is not None]
    return keys


def _check_logger(opt: Options, ctx: Context) -> None:
    if opt.use_tb_logger is not None:  # UIR's top-level switch
        opt.logger.use_tb_logger = opt.logger.use_tb_logger or opt.use_tb_logger
    if opt.logger.keep_checkpoints < 1:
        raise ctx.error("logger.keep_checkpoints", f"must be at least 1, got {opt.logger.keep_checkpoints}")
    if opt.logger.wandb is not None and opt.is_train:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ctx.error("logger.wandb", "needs wandb, which is not installed: pip install wandb, or remove "
                                            "logger.wandb (logger.use_tb_logger: true logs to TensorBoard)")
    for key, ds in opt.datasets.items():
        if ds.n_per_degradation < 1:
            raise ctx.error(f"datasets.{key}.n_per_degradation", f"must be at least 1, got {ds.n_per_degradation}")


def _check_semantics(opt: Options, ctx: Context, check_paths: bool) -> None:
    unknown = [d for d in opt.distortion if d not in DEGRADATIONS]
    if unknown and opt.task != "text2image":
        logger.debug("%s: distortion names outside DA-CLIP's ten: %s", ctx.source, unknown)
    _check_datasets(opt, ctx)
    if opt.train is not None and opt.train.niter < 1:
        raise ctx.error("train.niter", f"must be at least 1 (training steps), got {opt.train.niter}")
    if opt.train is not None:
        try:
            opt.train.optimizer = optimizer_name(opt.train.optimizer)
        except ValueError as e:
            raise ctx.error("train.optimizer", str(e)) from None
    _check_splits(opt, ctx)
    _check_sampling(opt, ctx)
    _check_logger(opt, ctx)
    if opt.daclip.pretrained is None and opt.path.daclip is not None:
        opt.daclip.pretrained = opt.path.daclip
    if check_paths:
        _check_paths_exist(opt, ctx)


def options_to_dict(opt: Options) -> Dict[str, Any]:
    """Plain-dict view (for printing and for saving the resolved options next to a run)."""
    return dataclasses.asdict(opt)
