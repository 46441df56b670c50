"""Sampling schedulers by name: ``ddim``, ``dpm++`` and ``euler`` (diffusers), with their common aliases."""

from __future__ import annotations

from typing import Any

from .._utils.registry import Registry
from .._utils.suggest import suggest

__all__ = ["SCHEDULERS", "SCHEDULER_ALIASES", "make_scheduler", "scheduler_name"]

#: Sampling schedulers by name: diffusers classes, imported on first use. Register another with
#: ``SCHEDULERS.register("unipc", "diffusers:UniPCMultistepScheduler")``.
SCHEDULERS = Registry("scheduler")
SCHEDULERS.register("ddim", "diffusers:DDIMScheduler")
SCHEDULERS.register("dpm++", "diffusers:DPMSolverMultistepScheduler")
SCHEDULERS.register("euler", "diffusers:EulerDiscreteScheduler")
#: Other common scheduler names (diffusers class names, webui/k-diffusion names), matched case-insensitively.
SCHEDULER_ALIASES = {"ddimscheduler": "ddim", "dpmpp": "dpm++", "dpmpp_2m": "dpm++", "dpm++_2m": "dpm++",
                     "dpm++ 2m": "dpm++", "dpmsolver": "dpm++", "dpmsolvermultistepscheduler": "dpm++",
                     "dpm_solver": "dpm++", "euler_discrete": "euler", "eulerdiscretescheduler": "euler",
                     "k_euler": "euler"}


def scheduler_name(name: str) -> str:
    """The canonical scheduler name for ``name`` (case-insensitive, common aliases accepted).

    Raises:
        ValueError: an unknown name (the message lists the names and the closest match).
    """
    key = str(name).strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    key = {n.lower(): n for n in SCHEDULERS}.get(key, key)  # a name registered with capitals
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} (aliases: "
                         f"{', '.join(sorted(SCHEDULER_ALIASES))}).{suggest(key, SCHEDULERS.names())}")
    return key


def make_scheduler(name: str, train_scheduler: Any) -> Any:
    """A sampling scheduler (a registered name or an alias) from the base model's scheduler config."""
    return SCHEDULERS.get(scheduler_name(name)).from_config(train_scheduler.config)
