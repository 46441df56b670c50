"""Metrics as callables on image batches: pyiqa's networks when installed, the package's own PSNR/SSIM otherwise.

:func:`create_metrics` turns :class:`~daclip_lora.metrics.protocol.MetricSpec` s into :class:`Metric` s that
score ``(N, 3, H, W)`` batches in ``[0, 1]`` and know their protocol (pyiqa id, options, version). Every pyiqa
metric is created inside :func:`~daclip_lora.metrics.weights.weights_guard`, so a missing weight file is one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._utils.compat import MissingExtraError
from .._utils.image_metrics import psnr as own_psnr, ssim as own_ssim
from .protocol import OWN_METRICS, MetricSpec
from .weights import MissingMetricWeights, weights_guard

logger = logging.getLogger(__name__)

__all__ = ["FolderFid", "Metric", "create_metrics", "fid_folders", "pyiqa_version"]

INSTALL_HINT = 'pip install -e ".[metrics]"'


def pyiqa_version() -> Optional[str]:
    """The installed pyiqa version, or None."""
    try:
        from importlib.metadata import version

        return version("pyiqa")
    except Exception:  # not installed
        return None


@dataclass
class Metric:
    """A metric ready to score: ``metric(restored, gt)`` -> ``(N,)`` scores (``gt`` is None for NR metrics)."""

    spec: MetricSpec
    crop_border: int
    implementation: str
    fn: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, restored: torch.Tensor, gt: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(restored.float().clamp(0, 1), None if gt is None else gt.float().clamp(0, 1)).reshape(-1)

    def protocol(self) -> Dict[str, Any]:
        """pyiqa id, options, mode, direction and the implementation (``pyiqa X.Y`` or ``daclip_lora``)."""
        return {**self.spec.protocol(self.crop_border), "implementation": self.implementation}


def _own(spec: MetricSpec, crop_border: int) -> Metric:
    """PSNR/SSIM of :mod:`daclip_lora._utils.image_metrics` (BasicSR: float64, luma BT.601, peak 255)."""
    fn = own_psnr if spec.name.startswith("psnr") else own_ssim
    y = spec.name.endswith("_y")

    def score(restored: torch.Tensor, gt: Optional[torch.Tensor]) -> torch.Tensor:
        pairs = zip(restored.permute(0, 2, 3, 1).cpu().numpy(), gt.permute(0, 2, 3, 1).cpu().numpy())
        return torch.tensor([fn(a, b, crop_border=crop_border, y_channel=y) for a, b in pairs])

    return Metric(spec, crop_border, "daclip_lora", score)


def _pyiqa(spec: MetricSpec, device: Union[str, torch.device], crop_border: int,
           weights_dir: Optional[Union[str, Path]]) -> Metric:
    import pyiqa

    options = dict(spec.options)
    if spec.takes_crop_border:
        options["crop_border"] = crop_border
    with weights_guard(spec.name, weights_dir):
        net = pyiqa.create_metric(spec.pyiqa_id, device=torch.device(device), **options)

    def score(restored: torch.Tensor, gt: Optional[torch.Tensor]) -> torch.Tensor:
        out = net(restored.to(net.device)) if spec.mode == "NR" else net(restored.to(net.device), gt.to(net.device))
        return torch.as_tensor(out).detach().float().cpu()

    return Metric(spec, crop_border, f"pyiqa {pyiqa_version()}", score)


def create_metrics(specs: Sequence[MetricSpec], device: Union[str, torch.device] = "cpu", crop_border: int = 0,
                   weights_dir: Optional[Union[str, Path]] = None, skip_missing: bool = False
                   ) -> Tuple[List[Metric], Dict[str, str]]:
    """``(metrics, skipped)`` for the image metrics among ``specs`` (FID is folder-level: see ``fid_folders``).

    PSNR/SSIM use pyiqa when it is installed and the package's own code otherwise (the protocol says which).

    Args:
        skip_missing: a metric whose weights or extra are missing goes to ``skipped`` (name -> the one-line
            reason) instead of raising.

    Raises:
        MissingExtraError: pyiqa is needed and not installed (unless ``skip_missing``).
        MissingMetricWeights: a weight file is missing (unless ``skip_missing``).
    """
    have_pyiqa = pyiqa_version() is not None
    metrics: List[Metric] = []
    skipped: Dict[str, str] = {}
    for spec in specs:
        if spec.mode == "FID":
            continue
        try:
            if have_pyiqa:
                metrics.append(_pyiqa(spec, device, crop_border, weights_dir))
            elif spec.name in OWN_METRICS:
                metrics.append(_own(spec, crop_border))
            else:
                raise MissingExtraError(f"metric {spec.name!r} is computed by pyiqa, which is not installed: "
                                        f"{INSTALL_HINT}")
        except (MissingMetricWeights, MissingExtraError) as exc:
            if not skip_missing:
                raise
            skipped[spec.name] = str(exc)
            logger.debug("skipping %s: %s", spec.name, exc)  # the report lists it
    return metrics, skipped


class FolderFid:
    """pyiqa's FID (clean-fid, Inception features): created up front (so a missing weight fails before any
    image is scored), then ``fid(restored_dir, reference_dir)``."""

    def __init__(self, device: Union[str, torch.device] = "cpu", weights_dir: Optional[Union[str, Path]] = None,
                 batch_size: int = 8):
        if pyiqa_version() is None:
            raise MissingExtraError(f"metric 'fid' is computed by pyiqa, which is not installed: {INSTALL_HINT}")
        import pyiqa

        self.weights_dir, self.batch_size = weights_dir, batch_size
        with weights_guard("fid", weights_dir):
            self.net = pyiqa.create_metric("fid", device=torch.device(device))

    def __call__(self, restored: Union[str, Path], reference: Union[str, Path]) -> float:
        with weights_guard("fid", self.weights_dir):
            value = self.net(str(restored), str(reference), num_workers=0, batch_size=self.batch_size, verbose=False)
        return float(np.asarray(value))


def fid_folders(restored: Union[str, Path], reference: Union[str, Path], device: Union[str, torch.device] = "cpu",
                weights_dir: Optional[Union[str, Path]] = None, batch_size: int = 8) -> float:
    """FID of folder ``restored`` against folder ``reference`` (see :class:`FolderFid`)."""
    return FolderFid(device, weights_dir, batch_size)(restored, reference)
