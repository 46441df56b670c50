"""The training tasks by name: ``task:`` in an options file picks one, and the CLI reads this registry (as BasicSR
reads its model registry). A task is a trainer class (its step and batch logic; :mod:`daclip_lora.training.engine`
runs it), the folder name of what it writes under ``models/``, and optionally its ``test`` evaluation.

Entries are ``module:attribute`` strings imported on first use, so that reading options or ``--help`` does not
import diffusers. Register a new task with :func:`register_task`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["TASKS", "TaskSpec", "get_task", "register_task"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``trainer`` and ``evaluate`` are ``"module:attribute"`` paths (relative ones are in this package);
    ``reads`` the keys of daclip_lora's own option blocks it reads (a prefix covers its sub-keys): a key a file
    sets and its task does not read is an error naming the task. UIR's own keys are not checked."""

    name: str
    trainer: str
    output: str
    evaluate: Optional[str] = None
    reads: Tuple[str, ...] = ()

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


_RUNTIME_COMMON = ("runtime.mixed_precision", "runtime.gradient_accumulation_steps", "runtime.gradient_checkpointing",
                   "runtime.max_grad_norm", "runtime.weight_decay", "runtime.ema_decay", "runtime.device")

register_task(TaskSpec("restoration", ".restoration:RestorationTrainer", "restoration",
                       ".restoration:evaluate_restoration",
                       reads=("daclip", "sd.base", "sd.prompt", "sd.lora", "sd.conditioning", "sd.objective",
                              "sd.one_step_t", "sd.one_step_input", "sd.train_conv_in", "sd.vae_encoder_lora",
                              "sd.one_step_loss", "sd.one_step_space", "sd.loss", "sd.fusion", "sd.fusion_images",
                              "sd.fusion_decoded_lq", "runtime", "sampling")))
register_task(TaskSpec("controller", ".controller:ControllerTrainer", "controller_lora",
                       ".controller:evaluate_controller", reads=("daclip", "controller", *_RUNTIME_COMMON)))
register_task(TaskSpec("text2image", ".text2image:Text2ImageTrainer", "text2image_lora",
                       reads=("daclip.model", "daclip.pretrained", "sd.base", "sd.lora", "sd.text_encoder_lora",
                              "sd.text_encoder_lr", "sd.resolution", "sd.validation_prompts", "sd.clip_score",
                              *_RUNTIME_COMMON, "runtime.snr_gamma", "runtime.noise_offset", "sampling.scheduler",
                              "sampling.steps", "sampling.guidance_scale", "sampling.seed")))
