"""The training tasks by name: ``task:`` in an options file picks one, and the CLI reads this registry (as BasicSR
reads its model registry). A task is a trainer class (its step and batch logic; :mod:`daclip_lora.training.engine`
runs it), the folder name of what it writes under ``models/``, and optionally its ``test`` evaluation.

Entries are ``module:attribute`` strings imported on first use, so that reading options or ``--help`` does not
import diffusers. Register a new task with :func:`register_task`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

__all__ = ["TASKS", "TaskSpec", "get_task", "register_task"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``trainer`` and ``evaluate`` are ``"module:attribute"`` paths (relative ones are in this package)."""

    name: str
    trainer: str
    output: str
    evaluate: Optional[str] = None

    def _load(self, path: str) -> Any:
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module, __name__), attr)

    def trainer_class(self) -> Callable[..., Any]:
        return self._load(self.trainer)

    def evaluator(self) -> Optional[Callable[..., Any]]:
        return self._load(self.evaluate) if self.evaluate else None


TASKS: Dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) a task; returns it."""
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]


register_task(TaskSpec("restoration", ".restoration:RestorationTrainer", "restoration",
                       ".restoration:evaluate_restoration"))
register_task(TaskSpec("controller", ".controller:ControllerTrainer", "controller_lora",
                       ".controller:evaluate_controller"))
register_task(TaskSpec("text2image", ".text2image:Text2ImageTrainer", "text2image_lora"))
