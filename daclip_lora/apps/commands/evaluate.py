"""``daclip-lora evaluate``: image-quality metrics of restored images (pyiqa)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import MetricNames


def _evaluate_paths(args: argparse.Namespace) -> None:
    """Check ``evaluate``'s arguments (folders, metric names) before torch is imported."""
    from ...metrics.protocol import default_metrics, resolve_metrics

    for label, folder in (("--restored", args.restored), ("--gt", args.gt), ("--weights-dir", args.weights_dir)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{label} {folder} is not a folder")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    resolve_metrics(args.metrics or default_metrics(args.gt is not None), has_gt=args.gt is not None)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ...metrics import DEFAULT_METRICS, evaluate_folders, format_evaluation, write_evaluation

    report = evaluate_folders(args.restored, args.gt, metrics=args.metrics or DEFAULT_METRICS, device=args.device,
                              batch_size=args.batch_size, crop_border=args.crop_border,
                              weights_dir=args.weights_dir, skip_missing=args.skip_missing, progress=True)
    print(format_evaluation(report))
    out = args.out or args.restored
    paths = write_evaluation(report, out)
    print(f"per-image scores, means and the protocol of every number: {', '.join(str(p) for p in paths)}")
    return 0


def register(sub: Any) -> None:
    from ...metrics.protocol import DEFAULT_METRICS, METRICS

    p = sub.add_parser("evaluate", help="image-quality metrics of restored images (pyiqa), per folder and degradation",
                       description="Score restored images against their ground truth (paired by file name) and/or "
                                   "with no-reference metrics, through pyiqa (the metrics extra); PSNR/SSIM fall "
                                   "back to the package's own without it. Sub-folders (UIR MD trees) get their own "
                                   "rows. Writes metrics.json (with each metric's pyiqa id, options and version), "
                                   "metrics.csv and metrics_summary.csv.")
    p.add_argument("--restored", type=Path, required=True, help="folder of restored images (searched recursively)")
    p.add_argument("--gt", type=Path, default=None,
                   help="ground-truth folder: x.* beside the same sub-folder, its GT/ sub-folder, or the top")
    p.add_argument("--metrics", nargs="+", metavar="NAME", default=None, action=MetricNames,
                   help=f"space- or comma-separated, any of {', '.join(METRICS)} (default: "
                        f"{' '.join(DEFAULT_METRICS)}; without --gt the no-reference ones)")
    p.add_argument("--crop-border", type=int, default=0, help="pixels cropped from each side for PSNR/SSIM")
    p.add_argument("--device", default="cpu", help="torch device of the metric networks (default: cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images of one size scored together (default: 1)")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="folder used as torch's hub folder for metric weights (pyiqa/, checkpoints/, clip/)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip metrics whose weights (or pyiqa) are missing, listing them, instead of failing")
    p.add_argument("--out", type=Path, default=None, help="where the reports go (default: the --restored folder)")
    p.set_defaults(func=_cmd_evaluate, precheck=_evaluate_paths)
