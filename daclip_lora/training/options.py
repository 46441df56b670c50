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
from typing import Any, Dict, FrozenSet, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from .._utils.suggest import suggest
from ..data.degrade import DEGRADATIONS
from ..restoration.schedulers import SCHEDULERS, scheduler_name
from ._coerce import Context, OptionsError, build, dataclasses_in, parse_override_value, resolve_field
from .blocks import (ConditioningOptions, ControllerOptions, DaclipModelOptions, DaclipOptions,  # noqa: F401
                     DiffusionRuntimeOptions, GenerationOptions, LoraOptions, LossOptions, RestorationRuntimeOptions,
                     RestorationSDOptions, RuntimeOptions, SamplingOptions, SDOptions, Text2ImageSDOptions,
                     input_path)
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



_path = input_path


# ------------------------------------------------------------------------------ schema
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
    #: our own blocks: each holds the dataclass its task declares (training.tasks.TaskSpec.blocks); a block the
    #: task does not read holds that class's defaults
    daclip: DaclipModelOptions = field(default_factory=DaclipOptions)
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    sd: SDOptions = field(default_factory=SDOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    sampling: GenerationOptions = field(default_factory=SamplingOptions)
    extra: Dict[str, Any] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    source: Optional[str] = None


def task_keys(task: str) -> Tuple[str, ...]:
    """The keys of our own blocks that ``task`` reads (derived from its
    :class:`~daclip_lora.training.tasks.TaskSpec`'s ``blocks``; a prefix covers its sub-keys)."""
    return TASKS.get(task).reads


#: the top-level keys of our own (strict) blocks
OWN_BLOCKS = ("daclip", "controller", "sd", "runtime", "sampling")

def _strict() -> FrozenSet[type]:
    """The strict classes: every dataclass of the blocks the registered tasks declare, nested ones included (a
    task registered from outside gets the same unknown-key errors as ours)."""
    return dataclasses_in([cls for _, spec in TASKS.items() for cls in spec.blocks.values()])

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


def _override_type(parts: Sequence[str], task: Any) -> Any:
    """The schema type at ``parts``: our own blocks through the classes ``task`` declares (else any task's, so
    that a key of another task reaches the loader's "never reads it" message)."""
    if parts[0] not in OWN_BLOCKS:
        return resolve_field(Options, parts, _strict())
    spec = TASKS.get(task) if isinstance(task, str) and task in TASKS else None
    classes = [spec.blocks[parts[0]]] if spec is not None and parts[0] in spec.blocks else []
    classes += [s.blocks[parts[0]] for _, s in TASKS.items() if parts[0] in s.blocks]
    first: Optional[OptionsError] = None
    for cls in dict.fromkeys(classes):  # the file's task first, each class once
        try:
            return resolve_field(cls, parts[1:], _strict(), where=parts[0])
        except OptionsError as e:
            first = first or e
    if first is not None:
        raise first
    return None


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` overrides to raw option data; values are typed by the schema of the file's task."""
    for item in sorted(overrides, key=lambda o: not o.strip().startswith("task=")):  # the task first: it types
        if "=" not in item:
            raise OptionsError(f"--opt {item!r}: expected key.sub=value (e.g. train.lr_G=2e-4)")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise OptionsError(f"--opt {item!r}: empty key")
        tp = _override_type(parts, data.get("task", "restoration"))
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
    ctx = Context(source, _strict())
    datasets_raw = data.pop("datasets", None) or {}
    if not isinstance(datasets_raw, dict):
        raise ctx.error("datasets", f"expected a mapping of dataset blocks, got {datasets_raw!r}")
    data.pop("is_train", None)
    own = {name: data.pop(name) for name in OWN_BLOCKS if name in data}
    opt: Options = build(Options, data, "", ctx)
    _build_own_blocks(opt, own, ctx)
    opt.is_train = is_train
    if is_train and opt.train is None:
        opt.train = TrainOptions()
    for key, block in datasets_raw.items():
        ds: DatasetOptions = build(DatasetOptions, block, f"datasets.{key}", ctx)
        ds.phase = _phase(str(key), source)
        if ds.distortion is None and ds.mode in ("MD", "GT"):
            ds.distortion = list(opt.distortion)
        opt.datasets[str(key)] = ds
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


def _refuse_unread(task: str, key: str, ctx: Context) -> None:
    """A key of our own blocks that ``task`` never reads: an error naming the tasks that do."""
    readers = [t for t in TASKS if t != task and _reads(t, key)]
    hint = f" (it is read by task {' and '.join(readers)})" if readers else ""
    raise ctx.error(key, f"set, but task {task} never reads it{hint}; remove it from the file")


def _build_own_blocks(opt: Options, own: Dict[str, Any], ctx: Context) -> None:
    """Our strict blocks, each built with the dataclass ``opt.task`` declares for it; a block or key the task
    does not read is refused (naming the task that reads it), a key no task reads names the closest valid one."""
    if not isinstance(opt.task, str) or opt.task not in TASKS:
        raise ctx.error("task", f"expected one of {', '.join(TASKS)}, got {opt.task!r}."
                                f"{suggest(str(opt.task), list(TASKS))} (training.tasks.register_task adds one)")
    blocks = TASKS.get(opt.task).blocks
    for name, raw in own.items():
        for key in raw if isinstance(raw, dict) else ():
            if name not in blocks or (not _reads(opt.task, f"{name}.{key}")
                                      and any(_reads(t, f"{name}.{key}") for t in TASKS)):
                _refuse_unread(opt.task, f"{name}.{key}", ctx)
        if name not in blocks and raw is not None and not isinstance(raw, dict):
            _refuse_unread(opt.task, name, ctx)
    for name, cls in blocks.items():
        setattr(opt, name, build(cls, own.get(name), name, ctx))


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
    for key, low in (("steps", 1), ("tile_size", 0), ("tile_overlap", 0)):
        value = getattr(s, key, None)  # text2image's sampling has no tiles
        if value is not None and value < low:
            raise ctx.error(f"sampling.{key}", f"must be at least {low}, got {value}")
    if isinstance(s, SamplingOptions):
        if not 0 < s.strength <= 1:
            raise ctx.error("sampling.strength", f"must be in (0, 1], got {s.strength}")
        if s.tile_size and s.tile_overlap is not None and s.tile_overlap >= s.tile_size:
            raise ctx.error("sampling.tile_overlap", f"must be smaller than sampling.tile_size ({s.tile_size}), "
                                                     f"got {s.tile_overlap}")


def _check_conditioning(opt: Options, ctx: Context) -> None:
    """``sd.conditioning.paths`` names registered paths (checked before any model is loaded)."""
    if not isinstance(opt.sd, RestorationSDOptions):
        return
    from ..restoration.conditioning import PATHS

    for name in opt.sd.conditioning.paths:
        if name not in PATHS:
            raise ctx.error(f"sd.conditioning.paths.{name}", f"not a registered conditioning path; registered: "
                                                             f"{', '.join(PATHS)}.{suggest(name, PATHS.names())} "
                                                             f"(PATHS.register adds one)")


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
    _check_conditioning(opt, ctx)
    _check_logger(opt, ctx)
    if opt.daclip.pretrained is None and opt.path.daclip is not None:
        opt.daclip.pretrained = opt.path.daclip
    if check_paths:
        _check_paths_exist(opt, ctx)


def options_to_dict(opt: Options) -> Dict[str, Any]:
    """Plain-dict view (for printing and for saving the resolved options next to a run)."""
    return dataclasses.asdict(opt)
