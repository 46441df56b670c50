"""``train.optimizer``: the optimizers a run can ask for, by UIR's names, honoured or refused (never replaced).

``AdamW`` and ``Adam`` are torch's. ``AdamW8bit`` and ``Lion`` come from bitsandbytes (a maintained package, in
the pinned set through the metrics extra); ``AdamW8bit`` needs a CUDA device. Names are matched without case.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from .._utils.registry import Registry
from .._utils.suggest import suggest

__all__ = ["OPTIMIZERS", "optimizer_name", "create_optimizer"]


def _torch(name: str) -> Callable[..., Any]:
    def make(groups: List[Dict[str, Any]], lr: float, betas: Tuple[float, float], device: Any) -> Any:
        import torch

        return getattr(torch.optim, name)(groups, lr=lr, betas=betas)

    return make


def _bitsandbytes(name: str, cuda_only: bool) -> Callable[..., Any]:
    def make(groups: List[Dict[str, Any]], lr: float, betas: Tuple[float, float], device: Any) -> Any:
        if cuda_only and getattr(device, "type", str(device)) != "cuda":
            raise ValueError(f"train.optimizer {name} keeps 8-bit optimizer states on a CUDA device, and this run "
                             f"is on {device}; use train.optimizer: AdamW")
        try:
            import bitsandbytes
        except ImportError:
            raise ValueError(f"train.optimizer {name} needs bitsandbytes: pip install bitsandbytes (or "
                             f"\".[metrics]\", which installs it), or use train.optimizer: AdamW") from None
        return getattr(bitsandbytes.optim, name)(groups, lr=lr, betas=betas)

    return make


#: canonical name -> ``make(param_groups, lr, betas, device)``
OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("AdamW", _torch("AdamW"))
OPTIMIZERS.register("Adam", _torch("Adam"))
OPTIMIZERS.register("AdamW8bit", _bitsandbytes("AdamW8bit", cuda_only=True))
OPTIMIZERS.register("Lion", _bitsandbytes("Lion", cuda_only=False))


def optimizer_name(name: str) -> str:
    """The canonical name of ``name`` (case-insensitive).

    Raises:
        ValueError: an optimizer that is not supported (the message names the supported ones).
    """
    by_key = {n.lower(): n for n in OPTIMIZERS}
    canonical = by_key.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(f"optimizer {name!r} is not supported; use one of {', '.join(OPTIMIZERS)}."
                         f"{suggest(str(name), list(OPTIMIZERS))}")
    return canonical


def create_optimizer(name: str, groups: List[Dict[str, Any]], lr: float, betas: Tuple[float, float],
                     device: Any) -> Any:
    """The optimizer ``name`` over ``groups``."""
    return OPTIMIZERS.get(optimizer_name(name))(groups, lr, betas, device)
