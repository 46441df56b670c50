"""``daclip-lora restore``: an image or a folder tree restored (and scored with ``--gt``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

from ._common import logger, MetricNames, weights_folder


def _restore_paths(args: argparse.Namespace) -> None:
    """Check ``restore``'s paths and flags before anything heavy is imported; sets ``args.folder``, the
    restoration folder to load."""
    from ...tiny.locate import demonstration_notice, embedded_restorer

    if not args.input.exists():
        raise FileNotFoundError(f"--input {args.input} does not exist; pass an image file or a folder of images")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {args.quality}")
    if not 0 <= args.lora_scale <= 4:
        raise ValueError(f"--lora-scale must be in [0, 4] (1 = as trained), got {args.lora_scale}")
    _restore_gt_paths(args)
    if args.output.exists() and not args.output.is_dir():
        raise NotADirectoryError(f"--output {args.output} is a file; pass a folder (it is created if missing)")
    if args.scheduler is not None:
        from ...restoration.schedulers import scheduler_name

        scheduler_name(args.scheduler)  # an unknown name fails before the models load
    if args.weights is None:
        print(demonstration_notice("--weights experiments/<name>/models/restoration"), file=sys.stderr)
    args.folder = embedded_restorer() if args.weights is None else weights_folder(args)


#: ``restore``'s multi-step sampling flags and their defaults (``None`` on the command line: not given)
SAMPLING_DEFAULTS = {"steps": 25, "scheduler": "ddim", "strength": 1.0, "seed": 0}


def _sampling_arguments(args: argparse.Namespace, pipe: Any) -> Dict[str, Any]:
    """The sampling arguments of ``restore``; a warning line for each given one the model does not use."""
    given = [name for name in SAMPLING_DEFAULTS if getattr(args, name) is not None]
    for name in pipe.ignored_arguments(given):
        logger.warning("--%s %s does not apply to this one-step model (one UNet call from the LQ latent); ignored",
                       name, getattr(args, name))
    return {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in SAMPLING_DEFAULTS.items()}


def _restore_gt_paths(args: argparse.Namespace) -> None:
    """``restore --gt/--metrics``: the folder exists and the names are metrics (no torch yet)."""
    if args.gt is not None and not args.gt.is_dir():
        raise FileNotFoundError(f"--gt {args.gt} is not a folder")
    if args.metrics is not None and args.gt is None:
        raise ValueError("--metrics scores the outputs against --gt; pass --gt DIR (or use `daclip-lora evaluate`)")
    if args.gt is not None:
        from ...metrics.protocol import resolve_metrics

        resolve_metrics(args.metrics or RESTORE_METRICS, has_gt=True)


#: what ``restore --gt`` scores without ``--metrics``
RESTORE_METRICS = ("psnr_y", "ssim_y")


def _restore_metrics(args: argparse.Namespace) -> None:
    """Create ``restore --gt``'s metrics before restoring: a missing weight or extra fails first, not after."""
    if args.gt is None:
        return
    from ...metrics import METRICS, create_metrics

    create_metrics([METRICS[m] for m in args.metrics or RESTORE_METRICS])


def _score_restored(args: argparse.Namespace, written: List[Path]) -> None:
    from ...metrics import evaluate_folders, format_evaluation, write_evaluation

    if args.gt is None or not written:
        return
    report = evaluate_folders(args.output, args.gt, metrics=args.metrics or RESTORE_METRICS)
    print(format_evaluation(report))
    print(f"scores and their protocol: {write_evaluation(report, args.output)[0]}")


def _cmd_restore(args: argparse.Namespace) -> int:
    from ...restoration.pipeline import RestorationPipeline

    if getattr(args, "folder", None) is None:
        _restore_paths(args)
    _restore_metrics(args)
    pipe = RestorationPipeline.from_pretrained(args.folder, base=args.base, daclip_pretrained=args.daclip,
                                               merge_lora=not args.no_merge, device=args.device,
                                               precision=args.precision, lora_scale=args.lora_scale)
    if args.compile:
        pipe.compile()
    report = pipe.restore_folder(args.input, args.output, batch_size=args.batch_size, grid=args.grid,
                                 quality=args.quality, output_format=args.format,
                                 skip_existing=args.skip_existing, guidance_scale=args.guidance,
                                 color_fix=args.color_fix, degradation=args.degradation,
                                 tile_size=args.tile_size, tile_overlap=args.tile_overlap, **_sampling_arguments(args, pipe))
    if report.existing:
        print(f"kept {len(report.existing)} output(s) of an earlier run (--skip-existing)")
    print(f"restored {len(report.written)} image(s) -> {args.output}"
          + (f" (side-by-side grids in {Path(args.output) / 'grids'})" if args.grid else "")
          + ("; DA-CLIP's reading of each: degradations.json" if report.degradations else ""))
    for path in report.skipped:
        print(f"  not an image, not restored: {path}")
    for path, reason in report.failed:
        print(f"  failed: {reason}")
    _score_restored(args, report.written)
    return 1 if report.failed else 0


def _add_restore_output_args(p: Any) -> None:
    """``restore``'s output files: grids, quality, format, resume."""
    p.add_argument("--grid", action="store_true", help="also write OUTPUT/grids/<name>.png (LQ | restored)")
    p.add_argument("--quality", "--jpeg-quality", dest="quality", type=int, default=None,
                   help="quality (1-100) of restored JPEGs, or of lossy WebPs (default: each JPEG input's own "
                        "quantisation tables, i.e. its quality; WebP lossless)")
    p.add_argument("--format", choices=["png", "jpg", "tif", "webp"], default=None,
                   help="write every output in this format (default: each input's own format and bit depth; "
                        "ICC profile, EXIF with the orientation applied, grayscale and alpha are kept)")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume an interrupted run: leave inputs whose output exists and decodes (outputs are "
                        "written atomically, so a killed run leaves no half-written file)")


def register(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore an image or a folder of images with a trained restoration LoRA",
                       description="Restore every image of INPUT (a folder, with its sub-folders, or one file) "
                                   "into OUTPUT, keeping relative paths, file names and formats. Images larger "
                                   "than the base's native size are restored in "
                                   "blended tiles. Unreadable files are listed, never skipped silently "
                                   "(exit code 1 if any failed).")
    p.add_argument("--weights", type=Path, default=None,
                   help="restoration folder written by training (experiments/<name>/models/restoration), the folder "
                        "above it, or a `daclip-lora demo` output folder (default: the shipped tiny restorer, "
                        "trained on 64 px synthetic degradations: a demonstration, not a photo restorer)")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--base", default=None, help="SD base folder (default: the one recorded in the weights)")
    p.add_argument("--daclip", default=None, help="DA-CLIP checkpoint (default: the one recorded in the weights)")
    one_step = " (multi-step models only: one-step models, the shipped restorer and the demo's included, warn " \
               "and ignore it)"
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 25)" + one_step)
    p.add_argument("--scheduler", default=None,
                   help="ddim, dpm++ or euler, aliases such as dpmpp_2m accepted (default: ddim)" + one_step)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1, off)")
    p.add_argument("--lora-scale", type=float, default=1.0,
                   help="fidelity / perception: the UNet LoRA's strength, 0 (the base UNet: close to the input) to "
                        "1 (as trained, default); above 1 extrapolates")
    p.add_argument("--color-fix", choices=["none", "wavelet", "adain", "auto"], default="none",
                   help="give the result the LQ's colours: wavelet (its low frequencies), adain (its channel "
                        "statistics), auto (wavelet unless DA-CLIP reads a low-frequency degradation such as low "
                        "light or haze); default none")
    p.add_argument("--degradation", default=None, metavar="WORD",
                   help="condition on the DA-CLIP text embedding of this degradation word (e.g. hazy) instead of "
                        "each image's own degradation embedding (DA-CLIP's reading is still written to "
                        "OUTPUT/degradations.json)")
    p.add_argument("--strength", type=float, default=None,
                   help="< 1 starts from the noised LQ latent (default: 1)" + one_step)
    p.add_argument("--seed", type=int, default=None, help="sampling noise seed (default: 0)" + one_step)
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile side in pixels (default: the base's native size; 0 disables tiling)")
    p.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: tile/4)")
    p.add_argument("--batch-size", type=int, default=4, help="images of the same size restored together")
    _add_restore_output_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast dtype of the UNet and DA-CLIP (default: fp32; bf16 on recent GPUs)")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (slower; same outputs to 1e-4)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (channels_last): slow first batch, faster after")
    p.add_argument("--gt", type=Path, default=None,
                   help="ground-truth folder: score the outputs afterwards as `daclip-lora evaluate` does")
    p.add_argument("--metrics", nargs="+", metavar="NAME", default=None, action=MetricNames,
                   help="metrics for --gt, space- or comma-separated (default: psnr_y ssim_y; any `evaluate` "
                        "metric)")
    p.set_defaults(func=_cmd_restore, precheck=_restore_paths)
