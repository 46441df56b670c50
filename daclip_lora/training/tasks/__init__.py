"""The training tasks by name: ``task:`` in an options file picks one, and the CLI reads this registry (as BasicSR
reads its model registry). A task is a trainer class (its step and batch logic; :mod:`daclip_lora.training.engine`
runs it), the folder name of what it writes under ``models/``, and optionally its ``test`` evaluation.

Entries are ``module:attribute`` strings imported on first use, so that reading options or ``--help`` does not
import diffusers. Register a new task with :func:`register_task`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ..._utils.registry import Registry
from .. import blocks as b

__all__ = ["TASKS", "TaskSpec", "get_task", "register_task"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``trainer`` and ``evaluate`` are ``"module:attribute"`` paths (relative ones are in this package);
    ``blocks`` maps each of daclip_lora's own option blocks the task reads (``sd``, ``runtime``, ...) to its
    dataclass (:mod:`daclip_lora.training.blocks`). The keys it reads (:attr:`reads`) are derived from them: a key
    a file sets and its task does not read is an error naming the task. UIR's own keys are not checked. Every task
    reads ``runtime`` (the engine does), :class:`~daclip_lora.training.blocks.RuntimeOptions` unless it says
    otherwise."""

    name: str
    trainer: str
    output: str
    evaluate: Optional[str] = None
    blocks: Dict[str, type] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "runtime" not in self.blocks:
            object.__setattr__(self, "blocks", {**self.blocks, "runtime": b.RuntimeOptions})

    @property
    def reads(self) -> Tuple[str, ...]:
        """The dotted keys of our own blocks this task reads (a nested block's key covers its sub-keys)."""
        return tuple(k for name, cls in self.blocks.items() for k in b.block_keys(name, cls))

    def _load(self, path: str) -> Any:
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module, __name__), attr)

    def trainer_class(self) -> Callable[..., Any]:
        return self._load(self.trainer)

    def evaluator(self) -> Optional[Callable[..., Any]]:
        return self._load(self.evaluate) if self.evaluate else None


#: the tasks by name (:class:`TaskSpec` entries)
TASKS = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) a task; returns it."""
    return TASKS.register(spec.name, spec)


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones and the closest).
    """
    return TASKS.get(name)


register_task(TaskSpec("restoration", ".restoration:RestorationTrainer", "restoration",
                       ".restoration_eval:evaluate_restoration",
                       blocks={"daclip": b.DaclipOptions, "sd": b.RestorationSDOptions,
                               "runtime": b.RestorationRuntimeOptions, "sampling": b.SamplingOptions}))
register_task(TaskSpec("controller", ".controller:ControllerTrainer", "controller_lora",
                       ".controller:evaluate_controller",
                       blocks={"daclip": b.DaclipOptions, "controller": b.ControllerOptions}))
register_task(TaskSpec("text2image", ".text2image:Text2ImageTrainer", "text2image_lora",
                       blocks={"daclip": b.DaclipModelOptions, "sd": b.Text2ImageSDOptions,
                               "runtime": b.DiffusionRuntimeOptions, "sampling": b.GenerationOptions}))
