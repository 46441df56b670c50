"""The one training loop shared by every trainer (accelerate-based).

A trainer (see ``daclip_lora.training.tasks``) only provides its model, dataset, step and batch logic as a
:class:`TrainTask`. The engine does the rest: device placement and mixed precision (accelerate),
gradient accumulation, the ``train.optimizer`` (``optimizers.py``) with weight-decay exclusions, warm-up +
cosine/multi-step schedules, gradient clipping, optional EMA of the trainable weights, deterministic sharded
sampling, periodic validation, atomic checkpoints and exact resume (weights, optimizer, scheduler, RNG, step), tqdm.

Crash consistency: a checkpoint is written to ``<step>.tmp`` and renamed to ``<step>`` only when complete,
so a ``training_state/<step>`` folder is always whole (a kill, a full disk or a read-only folder leaves at
most a ``.tmp`` that the next save removes). ``path.resume_state: auto`` resumes from the newest complete
checkpoint of the run (or starts fresh when there is none). Every step's logged values go to
``<experiments_root>/losses.csv`` (rows past the resumed step are dropped on resume, so the file always
reads as one uninterrupted run). SIGINT (Ctrl-C) finishes the current step, saves a checkpoint and raises
:class:`TrainingInterrupted`; a second SIGINT stops at once.

Batches: ``datasets.train.batch_size`` is the *global* batch (as in UIR); with N processes each takes
``batch_size / N`` samples of every global batch, so a run's trajectory does not depend on N.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .._utils.io import CheckpointWriteError, atomic_file, remove_tree, replace_path, tmp_sibling
from .optimizers import create_optimizer

logger = logging.getLogger(__name__)

__all__ = ["TrainTask", "Engine", "ShardedBatchSampler", "build_lr_lambda", "param_groups", "TrainResult",
           "per_sample_generators", "per_sample_randn", "per_sample_rand", "per_sample_randint",
           "TrainingInterrupted", "CheckpointWriteError", "latest_checkpoint", "LOSS_LOG"]

LOSS_LOG = "losses.csv"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT during training: the current step finished and a checkpoint was saved (``checkpoint``)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}; continue with --resume "
                         f"(path.resume_state: auto)")
        self.step, self.checkpoint = step, checkpoint


def latest_checkpoint(training_state: Any) -> Optional[Path]:
    """The newest *complete* checkpoint folder under ``training_state`` (``None`` if there is none)."""
    folder = Path(training_state)
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name)) if done else None

#: validation names where lower is better (for ``train.best_metric``)
LOWER_IS_BETTER = ("loss", "lpips", "dists", "niqe", "fid", "mse", "piqe")

NO_DECAY_KEYS = ("bias", "ln_", "norm", "logit_scale", "embedding", "positional_embedding", "class_embedding")


class TrainTask:
    """What a trainer provides. Override the methods marked *required*.

    Each batch carries ``_index`` (the samples' dataset indices) and the engine sets ``self.step``
    (the optimizer step being computed) and ``self.seed``, so a task can draw per-sample randomness
    that does not depend on how samples are split over processes (see :func:`per_sample_generators`).
    """

    #: the module whose trainable parameters are optimised (wrapped by accelerate, e.g. DDP)
    model: nn.Module
    step: int = 0
    seed: int = 0
    #: the validation value ``train.best_metric`` defaults to (``training_state/best`` keeps its best step)
    best_metric: Optional[str] = None
    #: images of the last validation, ``name -> (H, W, 3)`` floats in [0, 1], for the trackers
    validation_images: Optional[Dict[str, Any]] = None

    def setup(self, accelerator) -> None:
        """Move frozen parts to ``accelerator.device``, build caches, ... (optional)."""

    def train_dataset(self) -> Dataset:  # required
        raise NotImplementedError

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    def training_step(self, model: nn.Module, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:  # required
        """Return at least ``{"loss": scalar}``; other scalars are logged."""
        raise NotImplementedError

    def param_groups(self) -> Optional[List[Dict[str, Any]]]:
        """Optional explicit optimizer groups ``[{"params": [(name, p), ...], "lr": ...}]``."""
        return None

    def validate(self, step: int, out_dir: Path) -> Dict[str, float]:
        """Run validation (main process only); return scalars to log. Must not use the global RNG."""
        return {}

    def finish_training(self) -> None:
        """After the last step, before :meth:`save_outputs` (main process, EMA weights in place): a stage fitted on
        the trained weights (the restoration fusion head). Nothing by default."""

    def save_outputs(self, out_dir: Path) -> None:
        """Write the final artefacts (adapters, configs) to ``out_dir``."""

    def export(self, out_dir: Path) -> Path:
        """Write the current weights as the task's loadable folder (``daclip-lora export``); returns it."""
        raise ValueError(f"{type(self).__name__} has no exportable output")

    # ------------------------------------------------------------------ train --dry-run (training/dry_run.py)
    def parts(self, half: torch.dtype) -> Dict[str, Tuple[nn.Module, torch.dtype]]:
        """The modules a run holds, each with the dtype its frozen weights are kept in (``half``: the mixed
        precision's); trainable weights are always fp32."""
        return {"model": (self.model, torch.float32)}

    def composition(self) -> Dict[str, Dict[str, int]]:
        """Samples per label (degradation) of each dataset, from the index (no image decoded)."""
        return {}

    def sampling_groups(self) -> Optional[List[List[int]]]:
        """The training set's indices per degradation when its draws are balanced over degradations
        (``datasets.train.sampling: balanced``, UIR's MD default); ``None``: plain shuffling."""
        return None

    def memory_probe(self, batch_size: int) -> Optional[Callable[[], Any]]:
        """Move the modules to the meta device and return a function running one training step's forward at
        ``batch_size`` there (``None``: the task does not estimate its activations)."""
        return None

    def checkpointed_blocks(self) -> List[nn.Module]:
        """The blocks ``runtime.gradient_checkpointing`` recomputes in the backward pass."""
        return []

    def gradient_checkpointing(self, on: bool) -> None:
        """Turn gradient checkpointing of :meth:`checkpointed_blocks` on or off."""

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: Dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = [k for k in params if params[k].requires_grad and k not in state]
        unknown = [k for k in state if k not in params]
        if missing or unknown:
            raise ValueError(f"training state does not fit this model: {len(missing)} trainable tensors missing "
                             f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]}); resume with the "
                             f"same options the run was started with")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)


@dataclass
class TrainResult:
    step: int
    losses: List[float] = field(default_factory=list)  # one per optimizer step, averaged over processes
    validations: Dict[int, Dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


class ShardedBatchSampler(Sampler):
    """Deterministic epoch-seeded global batches, sharded over processes, resumable at any batch.

    Epoch ``e`` shuffles with ``torch.Generator().manual_seed(seed + e)``; process ``rank`` of ``world``
    takes positions ``rank::world`` of each global batch. With ``groups`` (the dataset indices of each
    degradation) an epoch draws the groups round-robin and a random member of each, as UIR's ``MDDataset``
    does. ``start`` skips that many global batches without loading them (used on resume).
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True, start: int = 0, groups: Optional[Sequence[Sequence[int]]] = None):
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} must be divisible by the number of processes {world}")
        if n < global_batch:
            raise ValueError(f"the training set has {n} samples, fewer than batch_size {global_batch}; "
                             f"lower datasets.train.batch_size or add data")
        self.n, self.batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self.groups = [torch.as_tensor(list(g), dtype=torch.long) for g in groups] if groups else None
        self.per_epoch = n // global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.groups is None:
            return torch.randperm(self.n, generator=generator)
        # UIR's MDDataset draw: position k of an epoch is degradation k % G, and a random image of it; the
        # positions are shuffled, so every global batch mixes the degradations evenly whatever their sizes
        kinds = (torch.arange(self.n) % len(self.groups))[torch.randperm(self.n, generator=generator)]
        order = torch.empty(self.n, dtype=torch.long)
        for kind, members in enumerate(self.groups):
            slots = kinds == kind
            order[slots] = members[torch.randint(len(members), (int(slots.sum()),), generator=generator)]
        return order

    def __iter__(self) -> Iterator[List[int]]:
        index = self.start
        epoch, order = -1, None
        while True:
            e, position = divmod(index, self.per_epoch)
            if e != epoch:  # one permutation per epoch, not per batch
                epoch, order = e, self._order(e)
            batch = order[position * self.batch:(position + 1) * self.batch]
            yield batch[self.rank::self.world].tolist()
            index += 1

    def __len__(self) -> int:  # infinite; a large number keeps DataLoader happy
        return 2 ** 62


class _Indexed(Dataset):
    """Adds each sample's dataset index as ``_index``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {**self.dataset[i], "_index": i}


def per_sample_generators(seed: int, step: int, indices: Sequence[int]) -> List[torch.Generator]:
    """One CPU generator per sample, keyed by (seed, step, dataset index): process-count independent."""
    mask = (1 << 63) - 1
    return [torch.Generator().manual_seed((seed * 6364136223846793005 + step * 1442695040888963407
                                           + int(i) * 2862933555777941757 + 1) & mask) for i in indices]


def per_sample_randn(gens: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32):
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device, dtype)


def per_sample_noise(gens: Sequence[torch.Generator], shape: Sequence[int], device, offset: float = 0.0
                     ) -> torch.Tensor:
    """Diffusion noise per sample; ``offset`` adds per-channel constant noise (the "noise offset" trick)."""
    noise = per_sample_randn(gens, shape, device)
    if offset:
        noise = noise + offset * per_sample_randn(gens, (shape[0], 1, 1), device)
    return noise


def per_sample_rand(gens: Sequence[torch.Generator], device) -> torch.Tensor:
    return torch.stack([torch.rand((), generator=g) for g in gens]).to(device)


def per_sample_randint(gens: Sequence[torch.Generator], high: int, device) -> torch.Tensor:
    return torch.stack([torch.randint(0, high, (), generator=g) for g in gens]).to(device)


def build_lr_lambda(scheme: str, total: int, warmup: int, base_lr: float, eta_min: float = 0.0,
                    steps: Optional[Sequence[int]] = None, gamma: float = 0.5) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: linear warm-up, then cosine (to ``eta_min``), multi-step or constant.

    UIR names are accepted: ``TrueCosineAnnealingLR``/``CosineAnnealingLR_Restart`` -> cosine,
    ``MultiStepLR``/``MultiStepLR_Restart`` -> multistep.
    """
    key = scheme.lower()
    kind = "cosine" if "cosine" in key else "multistep" if "multistep" in key else key
    if kind not in ("cosine", "multistep", "constant"):
        raise ValueError(f"unknown lr_scheme {scheme!r}; use cosine, multistep or constant "
                         f"(UIR's TrueCosineAnnealingLR and MultiStepLR are accepted)")
    warmup = max(0, warmup)
    floor = eta_min / base_lr if base_lr > 0 else 0.0
    milestones = sorted(steps or [])

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "multistep":
            return gamma ** sum(step >= m for m in milestones)
        return 1.0

    return fn


def param_groups(named: Sequence[Tuple[str, nn.Parameter]], weight_decay: float,
                 lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """AdamW groups with the reference's exclusions: no decay for 1-D tensors, biases, norms, logit scale."""
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr is not None:
        for g in groups:
            g["lr"] = lr
    return [g for g in groups if g["params"]]


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()),
                                                     *np_state[2:]), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Engine:
    """Runs a :class:`TrainTask` with the options' ``train``, ``runtime``, ``logger`` and ``path`` blocks."""

    def __init__(self, opt, task: TrainTask, keep_checkpoints: Optional[int] = None):
        self.opt, self.task = opt, task
        self.keep = keep_checkpoints or opt.logger.keep_checkpoints
        train_ds = next((d for d in opt.datasets.values() if d.phase == "train"), None)
        if train_ds is None:
            raise ValueError("training needs a dataset whose key starts with 'train'")
        self.train_opt = train_ds
        self.paths = opt.path

    # ------------------------------------------------------------------ helpers
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # accelerate keeps mixed precision & co in a process-wide singleton: a second run in the same
        # process (tests, notebooks, the demo) with other settings would be refused. Each fit() starts a
        # fresh AcceleratorState; the process group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        rt = self.opt.runtime
        cpu = rt.device == "cpu" or (rt.device is None and not torch.cuda.is_available())
        return Accelerator(mixed_precision=rt.mixed_precision, cpu=cpu, log_with=self._trackers() or None,
                           gradient_accumulation_steps=rt.gradient_accumulation_steps)

    def _trackers(self) -> List[Any]:
        """accelerate's trackers the ``logger`` block asks for: TensorBoard in ``<experiments_root>/tb_logger``
        (UIR's folder name), W&B with BasicSR's ``logger.wandb: {project, resume_id}``."""
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        lg, trackers = self.opt.logger, []
        if lg.use_tb_logger:
            trackers.append(TensorBoardTracker("tb_logger", str(self.paths.experiments_root)))
        if lg.wandb is not None:
            resume = {"id": lg.wandb["resume_id"], "resume": "allow"} if lg.wandb.get("resume_id") else {}
            trackers.append(WandBTracker(lg.wandb.get("project") or self.opt.name, name=self.opt.name, **resume))
        return trackers

    def _checkpoint_dir(self, step: int) -> Path:
        return Path(self.paths.training_state) / f"{step:08d}"

    def _save_checkpoint(self, accelerator, optimizer, scheduler, step: int, ema: Optional[Dict],
                         folder: Optional[Path] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
        """A complete checkpoint of ``step`` in ``training_state/<step>`` (or ``folder``, e.g. ``best``);
        ``extra`` goes into its ``state.json``."""
        from safetensors.torch import save_file

        final = folder or self._checkpoint_dir(step)
        tmp = final.with_name(final.name + ".tmp")  # every process writes its RNG state here
        try:
            if accelerator.is_main_process:
                tmp_sibling(final).mkdir(parents=True)  # the same folder, emptied of a crashed run's leftovers
                state = {k: v.detach().float().contiguous().cpu() for k, v in self.task.trainable_state().items()}
                save_file(state, str(tmp / "trainable.safetensors"))
                if ema is not None:
                    save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           tmp / "optim.pt")
            accelerator.wait_for_everyone()
            torch.save(_rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:  # state.json last: its presence marks a complete folder
                (tmp / "state.json").write_text(json.dumps({"step": step, "name": self.opt.name,
                                                            "world": accelerator.num_processes,
                                                            "global_batch": self._global_batch(), **(extra or {})}))
                replace_path(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(f"could not write the step-{step} checkpoint to {final.parent} ({e.strerror or e}); "
                                       f"free disk space or make the folder writable, then continue with --resume "
                                       f"(the last complete checkpoint is {latest_checkpoint(final.parent)})") from None
        if accelerator.is_main_process:
            self._prune_checkpoints(final.parent)
            logger.info("checkpoint: %s", final)
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self, folder: Path) -> None:
        """Keep the newest ``logger.keep_checkpoints`` step folders (``best`` is not a step folder)."""
        older = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())[:-self.keep]
        for p in older:
            remove_tree(p)  # renamed first: a kill mid-delete leaves no incomplete step folder
        for p in folder.glob("*.old"):  # what a kill left of an earlier deletion
            shutil.rmtree(p, ignore_errors=True)

    def _global_batch(self) -> int:
        """Samples per optimizer step: ``batch_size`` (global, as in UIR) x gradient accumulation."""
        return self.train_opt.batch_size * self.opt.runtime.gradient_accumulation_steps

    def _load_checkpoint(self, path: Path, accelerator, optimizer, scheduler) -> Tuple[int, Optional[Dict]]:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"resume_state {path} is not a training-state folder (no state.json); pass "
                                    f"experiments/<name>/training_state/<step>")
        meta = json.loads((path / "state.json").read_text())
        self._check_resume_batch(path, meta, accelerator.num_processes)
        self.task.load_trainable_state(load_file(str(path / "trainable.safetensors")))
        optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        rng = path / f"rng_{accelerator.process_index}.pt"
        _set_rng_state(torch.load(rng if rng.is_file() else path / "rng_0.pt", weights_only=True))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
        logger.info("resumed from %s at step %d", path, meta["step"])
        return int(meta["step"]), ema

    def _check_resume_batch(self, path: Path, meta: Dict[str, Any], world: int) -> None:
        """Another process count is fine when the global batch is the same: batches, per-sample noise and
        augmentation do not depend on it (a process that did not exist takes process 0's RNG state, which only
        the task's global-RNG draws could notice)."""
        saved, now = meta.get("global_batch"), self._global_batch()
        if saved is not None and saved != now:
            raise ValueError(f"{path} was trained with a global batch of {saved} samples per step (batch_size x "
                             f"gradient_accumulation_steps), this run has {now}; set datasets.train.batch_size "
                             f"and runtime.gradient_accumulation_steps so that they multiply to {saved}")
        if meta["world"] != world:
            logger.warning("resuming %s on %d processes (written by %d); the global batch of %d samples per step "
                           "is unchanged, so the run continues the same trajectory", path, world, meta["world"],
                           now)

    # --------------------------------------------------------------------- main
    def fit(self, resume: Optional[str] = None) -> TrainResult:
        """Train the task for ``train.niter`` steps (resuming from ``resume`` or ``path.resume_state``), write
        its outputs and return the per-step losses and validations."""
        import time

        from accelerate.utils import set_seed

        start_time = time.perf_counter()
        accelerator = self._accelerator()
        set_seed(self.opt.train.manual_seed)
        self.task.setup(accelerator)
        self.device = accelerator.device
        named = self._trainable()
        optimizer, scheduler = self._optimizer(named)
        model, optimizer = accelerator.prepare(self.task.model, optimizer)
        ema = {n: p.detach().clone() for n, p in self.task.trainable_state().items()} \
            if self.opt.runtime.ema_decay else None
        step, ema = self._resume(resume, accelerator, optimizer, scheduler, ema)
        accelerator.init_trackers("tb_logger")  # the trackers are built in _trackers(); this starts them
        run = _Run(accelerator, model, optimizer, scheduler, iter(self._loader(accelerator, step)), named, ema,
                   TrainResult(step=step), Path(self.paths.experiments_root),
                   self._open_loss_log(step) if accelerator.is_main_process else None,
                   best=self._best_so_far())
        step = self._run_loop(run, step)
        self._write_outputs(accelerator, ema)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        run.result.step = step
        run.result.seconds = time.perf_counter() - start_time
        self.accelerator = accelerator
        return run.result

    def _trainable(self) -> List[Tuple[str, nn.Parameter]]:
        named = [(n, p) for n, p in self.task.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
        for _, p in named:  # trainable weights are always kept in fp32 (autocast handles compute)
            p.data = p.data.float()
        return named

    def _optimizer(self, named: List[Tuple[str, nn.Parameter]]) -> Tuple[Any, Any]:
        rt, tr = self.opt.runtime, self.opt.train
        groups = self.task.param_groups() or [{"params": named}]
        optim_groups = [g for grp in groups
                        for g in param_groups(grp["params"], rt.weight_decay, grp.get("lr"))]
        optimizer = create_optimizer(tr.optimizer, optim_groups, tr.lr_G, (tr.beta1, tr.beta2), self.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
            build_lr_lambda(tr.lr_scheme, tr.niter, tr.warmup_iter, g.get("lr", tr.lr_G), tr.eta_min, tr.lr_steps,
                            tr.lr_gamma) for g in optim_groups])
        return optimizer, scheduler

    def _resume(self, resume: Optional[str], accelerator, optimizer, scheduler,
                ema: Optional[Dict[str, torch.Tensor]]) -> Tuple[int, Optional[Dict[str, torch.Tensor]]]:
        """The step to start from and the EMA weights, from the checkpoint ``resume`` names (``auto``: newest)."""
        resume = resume or self.paths.resume_state
        if resume == "auto":
            resume = latest_checkpoint(self.paths.training_state)
            if resume is None:
                logger.info("resume_state auto: no complete checkpoint in %s, starting from step 0",
                            self.paths.training_state)
        if not resume:
            return 0, ema
        step, saved_ema = self._load_checkpoint(Path(resume), accelerator, optimizer, scheduler)
        return step, saved_ema if saved_ema is not None else ema

    def _loader(self, accelerator, step: int) -> DataLoader:
        tr, accum = self.opt.train, self.opt.runtime.gradient_accumulation_steps
        dataset = self.task.train_dataset()
        sampler = ShardedBatchSampler(len(dataset), self.train_opt.batch_size, accelerator.process_index,
                                      accelerator.num_processes, seed=tr.manual_seed,
                                      shuffle=self.train_opt.use_shuffle, start=step * accum,
                                      groups=self.task.sampling_groups())
        self.task.seed = tr.manual_seed
        # a private generator: creating the loader's iterator draws a worker base seed, which must not advance
        # the global RNG (a resumed run creates its iterator after restoring that RNG, the original did not)
        return DataLoader(_Indexed(dataset), batch_sampler=sampler, num_workers=self.train_opt.n_workers,
                          collate_fn=self.task.collate,
                          generator=torch.Generator().manual_seed(tr.manual_seed + step * accum))

    def _run_loop(self, run: "_Run", step: int) -> int:
        from tqdm import tqdm

        tr = self.opt.train
        run.bar = tqdm(total=tr.niter, initial=step, desc=f"train {self.opt.name}", unit="step",
                       disable=True if not run.accelerator.is_main_process else None, dynamic_ncols=True)
        run.model.train()
        try:
            with run.interrupt:
                return self._loop(run, step)
        finally:
            run.bar.close()
            if run.loss_log is not None:
                run.loss_log.close()

    def _write_outputs(self, accelerator, ema: Optional[Dict[str, torch.Tensor]]) -> None:
        if not accelerator.is_main_process:
            return
        if ema is not None:
            _swap_in(self.task, ema)
        self.task.finish_training()
        try:
            self.task.save_outputs(Path(self.paths.models))
        except OSError as e:
            raise CheckpointWriteError(f"could not write the trained outputs to {self.paths.models} "
                                       f"({e.strerror or e}); free disk space or make the folder writable, "
                                       f"then run again with --resume (the checkpoints are complete)") from None

    def _open_loss_log(self, step: int):
        """``losses.csv`` holding exactly the rows of steps ``<= step`` (a resumed run drops the rest; a line cut
        by a kill is dropped too)."""
        path = Path(self.paths.experiments_root) / LOSS_LOG
        header: Optional[List[str]] = None
        rows: List[List[str]] = []
        if step and path.is_file():
            with open(path, newline="") as f:
                for row in csv.reader(f):
                    if row and row[0] == "step":
                        header = row
                    elif header and len(row) == len(header) and row[0].isdigit() and int(row[0]) <= step:
                        rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:  # swapped in whole: a kill loses nothing
            if header:
                csv.writer(f).writerows([header, *rows])
        self._loss_header = header
        return open(path, "a", newline="")

    def _log_losses(self, f, step: int, logs: Dict[str, float]) -> None:
        if self._loss_header is None:
            self._loss_header = ["step", *sorted(logs)]
            csv.writer(f).writerow(self._loss_header)
        csv.writer(f).writerow([step, *(repr(float(logs.get(k, float("nan")))) for k in self._loss_header[1:])])
        f.flush()

    def _loop(self, run: "_Run", step: int) -> int:
        while step < self.opt.train.niter:
            logs = self._train_step(run, step)
            step += 1
            self._after_step(run, step, logs)
        return step

    def _train_step(self, run: "_Run", step: int) -> Dict[str, float]:
        """One optimiser step (``gradient_accumulation_steps`` micro-batches); the losses averaged over them."""
        task, rt, accelerator = self.task, self.opt.runtime, run.accelerator
        accum = rt.gradient_accumulation_steps
        logs: Dict[str, float] = {}
        for micro in range(accum):
            batch = _to_device(next(run.batches), accelerator.device)
            task.step = step * accum + micro
            with accelerator.accumulate(run.model):
                with accelerator.autocast():
                    out = task.training_step(run.model, batch)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and (rt.max_grad_norm or accelerator.trackers):
                    norm = accelerator.clip_grad_norm_([p for _, p in run.named], rt.max_grad_norm or math.inf)
                    run.grad_norm = float(norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            for k, v in out.items():
                logs[k] = logs.get(k, 0.0) + accelerator.reduce(v.detach().float(), "mean").item() / accum
        run.scheduler.step()
        if run.ema is not None:
            with torch.no_grad():
                for n, p in task.trainable_state().items():
                    run.ema[n].mul_(rt.ema_decay).add_(p.detach().to(run.ema[n].dtype), alpha=1 - rt.ema_decay)
        return logs

    def _after_step(self, run: "_Run", step: int, logs: Dict[str, float]) -> None:
        """Progress, logs, validation and checkpoint after step ``step``; raises on an interrupt."""
        opt, tr = self.opt, self.opt.train
        run.result.losses.append(logs["loss"])
        lr = run.scheduler.get_last_lr()[0]
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{lr:.2e}")
        if step % opt.logger.print_freq == 0 or step == tr.niter:
            logger.info("step %d/%d lr %.3e %s", step, tr.niter, lr, " ".join(f"{k} {v:.5f}" for k, v in logs.items()))
        if run.accelerator.trackers:
            run.accelerator.log(self._step_scalars(run, logs, lr), step=step)
        if tr.val_freq and (step % tr.val_freq == 0 or step == tr.niter):
            run.result.validations[step] = self._validate(run, step)
            self._keep_best(run, step, run.result.validations[step])
        if run.loss_log is not None:
            self._log_losses(run.loss_log, step, logs)
        stop = run.interrupt.is_set(run.accelerator)
        if stop or step % opt.logger.save_checkpoint_freq == 0 or step == tr.niter:
            saved = self._save_checkpoint(run.accelerator, run.optimizer, run.scheduler, step, run.ema)
            if stop and step < tr.niter:
                raise TrainingInterrupted(step, saved)

    def _step_scalars(self, run: "_Run", logs: Dict[str, float], lr: float) -> Dict[str, float]:
        """What the trackers get every step: each loss term, lr, gradient norm, samples/s, peak memory."""
        import time

        now = time.perf_counter()
        seconds, run.last_time = now - (run.last_time or now), now
        device = run.accelerator.device
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        scalars = {f"train/{k}": v for k, v in logs.items()}
        scalars.update({"train/lr": lr, "train/peak_memory_mb": peak})
        if run.grad_norm is not None:
            scalars["train/grad_norm"] = run.grad_norm
        if seconds > 0:
            scalars["train/samples_per_s"] = self._global_batch() / seconds
        return scalars

    def _validate(self, run: "_Run", step: int) -> Dict[str, float]:
        """The task's validation (main process), with the EMA weights when EMA is on (the raw weights' values
        then come too, as ``raw/<name>``); logged to the console and the trackers, with the task's images."""
        accelerator, metrics = run.accelerator, {}
        if accelerator.is_main_process:
            run.model.eval()
            with torch.no_grad():
                if run.ema is not None:
                    raw = {n: p.detach().clone() for n, p in self.task.trainable_state().items()}
                    metrics = {f"raw/{k}": v for k, v in (self.task.validate(step, run.out_dir) or {}).items()}
                    _swap_in(self.task, run.ema)
                    metrics = {**(self.task.validate(step, run.out_dir) or {}), **metrics}
                    _swap_in(self.task, raw)
                else:
                    metrics = self.task.validate(step, run.out_dir) or {}
            run.model.train()
            if metrics:
                logger.info("validation @ %d: %s", step, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self._log_validation(accelerator, step, metrics)
        accelerator.wait_for_everyone()
        return metrics

    def _log_validation(self, accelerator, step: int, metrics: Dict[str, float]) -> None:
        if not accelerator.trackers:
            return
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        images = getattr(self.task, "validation_images", None) or {}
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard" and images:
                tracker.log_images({f"val/{k}": v[None] for k, v in images.items()}, step=step, dataformats="NHWC")

    def _best_so_far(self) -> Optional[float]:
        """The best ``train.best_metric`` of an earlier part of this run (``training_state/best``), if any."""
        meta = Path(self.paths.training_state) / "best" / "state.json"
        return json.loads(meta.read_text()).get("best_value") if meta.is_file() else None

    def _keep_best(self, run: "_Run", step: int, metrics: Dict[str, float]) -> None:
        """Save ``training_state/best`` when ``train.best_metric`` improved (lower is better for losses and
        perceptual distances, higher for the rest)."""
        name = self.opt.train.best_metric or self.task.best_metric
        if name is None:
            return
        flag = torch.tensor([0.0], device=run.accelerator.device)
        if run.accelerator.is_main_process and metrics:
            if name not in metrics:
                raise ValueError(f"train.best_metric {name!r} is not a validation value of this task; use one of "
                                 f"{', '.join(sorted(metrics))}")
            value = metrics[name]
            lower = any(k in name.lower() for k in LOWER_IS_BETTER)
            if run.best is None or (value < run.best if lower else value > run.best):
                run.best, flag[0] = value, 1.0
        if run.accelerator.num_processes > 1:
            flag = run.accelerator.reduce(flag, "sum")
        if flag.item() > 0:
            self._save_checkpoint(run.accelerator, run.optimizer, run.scheduler, step, run.ema,
                                  folder=Path(self.paths.training_state) / "best",
                                  extra={"best_metric": name, "best_value": run.best})


@dataclass
class _Run:
    """What one :meth:`Engine.fit` call trains with, passed between its steps."""

    accelerator: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    batches: Iterator[Any]
    named: List[Tuple[str, nn.Parameter]]
    ema: Optional[Dict[str, torch.Tensor]]
    result: "TrainResult"
    out_dir: Path
    loss_log: Any
    best: Optional[float] = None  # the best train.best_metric so far
    bar: Any = None
    grad_norm: Optional[float] = None  # of the last optimizer step (when clipping or logging)
    last_time: Optional[float] = None
    interrupt: "_SigintFlag" = field(default_factory=lambda: _SigintFlag())


class _SigintFlag:
    """While active (main thread only), the first SIGINT sets a flag checked after each step; the second
    one raises ``KeyboardInterrupt`` at once. With several processes the flag is all-reduced, so every
    process stops after the same step."""

    def __init__(self):
        self._set = False
        self._previous: Any = None

    def __enter__(self) -> "_SigintFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._set:
            raise KeyboardInterrupt
        self._set = True
        logger.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def is_set(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self._set
        flag = torch.tensor([float(self._set)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)


def _swap_in(task: TrainTask, ema: Dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in task.trainable_state().items():
            p.copy_(ema[n].to(p.dtype))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
