"""Image quality: pyiqa's metrics with their protocol, folder evaluation, offline weights.

``evaluate_folders(restored, gt, metrics)`` -> :class:`EvaluationReport`; ``METRICS`` names what each metric is
(pyiqa id and options); ``weights_guard`` turns a missing weight file into one line. pyiqa is the ``metrics``
extra; without it PSNR/SSIM fall back to the package's own (BasicSR) implementation. Names resolve on first use
(PEP 562), so the CLI can check metric names without importing torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "folders": ("EvaluationReport", "ImagePair", "evaluate_folders", "format_evaluation", "pair_folders",
                "write_evaluation"),
    "iqa": ("FolderFid", "Metric", "create_metrics", "fid_folders", "pyiqa_version"),
    "protocol": ("DEFAULT_METRICS", "DEMO_METRICS", "METRICS", "OWN_METRICS", "MetricSpec", "default_metrics",
                 "resolve_metrics", "split_metric_names"),
    "weights": ("MissingMetricWeights", "downloads_disabled", "hub_dir", "no_downloads", "weights_guard"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
