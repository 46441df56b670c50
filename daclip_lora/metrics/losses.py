"""Perceptual training losses: pixel L1, LPIPS and DISTS on decoded images, as OSEDiff and S3Diff train.

The networks are pyiqa's (``create_metric(..., as_loss=True)``), frozen; they are created when the loss is, so
a missing weight file is one :class:`~daclip_lora.metrics.weights.MissingMetricWeights` line at start-up, not
at step 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from .._utils.compat import MissingExtraError
from .iqa import INSTALL_HINT, pyiqa_version
from .protocol import METRICS
from .weights import weights_guard

__all__ = ["PerceptualLoss", "PerceptualWeights"]


@dataclass(frozen=True)
class PerceptualWeights:
    """Weights of the pixel-space terms (0 leaves a term out)."""

    l1: float = 0.0
    lpips: float = 0.0
    dists: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l1", "lpips", "dists"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"loss weight {name} must be a number >= 0, got {value!r}")

    @property
    def networks(self) -> Dict[str, float]:
        return {k: w for k, w in (("lpips", self.lpips), ("dists", self.dists)) if w > 0}

    @property
    def any(self) -> bool:
        return self.l1 > 0 or bool(self.networks)


class PerceptualLoss(nn.Module):
    """``loss(pred, target)`` -> ``{"l1", "lpips", "dists"}`` (the enabled terms, weighted, batch means).

    Images are ``(N, 3, H, W)`` in ``[0, 1]``. The LPIPS/DISTS networks are frozen (no parameter of this module
    trains) but pass gradients to ``pred``.
    """

    def __init__(self, weights: PerceptualWeights, weights_dir: Optional[Union[str, Path]] = None):
        super().__init__()
        self.weights = weights
        self.nets = nn.ModuleDict()
        if weights.networks and pyiqa_version() is None:
            raise MissingExtraError(f"the perceptual losses ({', '.join(weights.networks)}) use pyiqa, which is not "
                                    f"installed: {INSTALL_HINT}")
        for name in weights.networks:
            import pyiqa

            spec = METRICS[name]
            with weights_guard(name, weights_dir):
                self.nets[name] = pyiqa.create_metric(spec.pyiqa_id, as_loss=True, device=torch.device("cpu"),
                                                      **spec.options)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":  # the networks stay in eval mode (no dropout)
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        terms: Dict[str, torch.Tensor] = {}
        if self.weights.l1 > 0:
            terms["l1"] = self.weights.l1 * (pred - target).abs().mean()
        for name, net in self.nets.items():
            terms[name] = self.weights.networks[name] * net(pred.float(), target.float()).mean()
        return terms
