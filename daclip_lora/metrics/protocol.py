"""What each metric is: the pyiqa id and options behind a name, so every number can carry its protocol.

The names are ours (``psnr_y``, ``lpips``, ...); each maps to one pyiqa metric id and the options it is created
with. Full-reference ones follow OSEDiff's ``test_metrics.py`` (``psnr``/``ssim`` on the Y channel of YCbCr,
``lpips`` = AlexNet v0.1, ``dists``); no-reference ones use pyiqa's defaults for the named model, and the name
says the training set where two exist (``maniqa-pipal`` is not S3Diff's ``maniqa``, which is KonIQ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple, Union

from .._utils.suggest import suggest

__all__ = ["MetricSpec", "METRICS", "DEFAULT_METRICS", "DEMO_METRICS", "OWN_METRICS", "default_metrics",
           "resolve_metrics", "split_metric_names"]

MODES = ("FR", "NR", "FID")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: our ``name``, pyiqa's ``pyiqa_id`` and ``options``, ``mode`` and its direction.

    ``mode`` is ``FR`` (needs the ground truth), ``NR`` (no reference) or ``FID`` (a folder against a folder).
    ``crop_border`` is passed to the metrics that take it (psnr, ssim).
    """

    name: str
    pyiqa_id: str
    mode: str
    lower_better: bool = False
    options: Dict[str, Any] = field(default_factory=dict)
    takes_crop_border: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"metric {self.name!r}: mode {self.mode!r} is not one of {MODES}")

    def protocol(self, crop_border: int = 0) -> Dict[str, Any]:
        """The record written beside every number of this metric."""
        options = dict(self.options)
        if self.takes_crop_border:
            options["crop_border"] = crop_border
        return {"pyiqa_id": self.pyiqa_id, "options": options, "mode": self.mode,
                "lower_better": self.lower_better}


_Y = {"test_y_channel": True, "color_space": "ycbcr"}
METRICS: Dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("psnr", "psnr", "FR", options={"test_y_channel": False}, takes_crop_border=True),
    MetricSpec("psnr_y", "psnr", "FR", options=_Y, takes_crop_border=True),
    MetricSpec("ssim", "ssimc", "FR", options={"test_y_channel": False}, takes_crop_border=True),
    MetricSpec("ssim_y", "ssim", "FR", options=_Y, takes_crop_border=True),
    MetricSpec("lpips", "lpips", "FR", lower_better=True, options={"net": "alex", "version": "0.1"}),
    MetricSpec("lpips_vgg", "lpips-vgg", "FR", lower_better=True, options={"net": "vgg", "version": "0.1"}),
    MetricSpec("dists", "dists", "FR", lower_better=True),
    MetricSpec("niqe", "niqe", "NR", lower_better=True, options={"test_y_channel": True}),
    MetricSpec("musiq", "musiq", "NR", options={"pretrained": "koniq10k"}),
    MetricSpec("maniqa-pipal", "maniqa-pipal", "NR", options={"train_dataset": "pipal"}),
    MetricSpec("clipiqa", "clipiqa", "NR"),
    MetricSpec("piqe", "piqe", "NR", lower_better=True),  # no learned weights: computable offline
    MetricSpec("fid", "fid", "FID", lower_better=True),
)}

#: what ``daclip-lora evaluate`` computes without ``--metrics`` (OSEDiff's table without FID)
DEFAULT_METRICS: Tuple[str, ...] = ("psnr_y", "ssim_y", "lpips", "dists", "niqe", "musiq", "maniqa-pipal", "clipiqa")
#: what the demo asks for: the defaults and PIQE, the no-reference metric that needs no weight file
DEMO_METRICS: Tuple[str, ...] = (*DEFAULT_METRICS, "piqe")
#: computed by the package itself (BasicSR convention) when pyiqa is not installed
OWN_METRICS: Tuple[str, ...] = ("psnr", "psnr_y", "ssim", "ssim_y")


def default_metrics(has_gt: bool) -> Tuple[str, ...]:
    """What ``evaluate`` computes without ``--metrics``: :data:`DEFAULT_METRICS`, or its no-reference ones."""
    return DEFAULT_METRICS if has_gt else tuple(m for m in DEFAULT_METRICS if METRICS[m].mode == "NR")


def split_metric_names(names: Union[str, Sequence[str]]) -> List[str]:
    """Metric names from what people type: ``"psnr,ssim"``, ``["psnr", "ssim"]`` or ``["psnr,ssim", "lpips"]``
    (order kept, blanks and duplicates dropped)."""
    items = [names] if isinstance(names, str) else list(names)
    return list(dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip()))


def resolve_metrics(names: Union[str, Sequence[str]], has_gt: bool) -> List[MetricSpec]:
    """The specs of ``names`` (space- or comma-separated, :func:`split_metric_names`; order kept, duplicates
    dropped).

    Raises:
        ValueError: an unknown name (with the closest known one), or a full-reference metric or FID without a
            ground-truth folder.
    """
    specs: List[MetricSpec] = []
    for name in split_metric_names(names):
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}.{suggest(name, METRICS)}")
        spec = METRICS[name]
        if spec.mode != "NR" and not has_gt:
            raise ValueError(f"metric {name!r} compares with the ground truth: pass --gt DIR, or drop it")
        specs.append(spec)
    if not specs:
        raise ValueError("no metric given: pass --metrics with one or more of " + ", ".join(METRICS))
    return specs
