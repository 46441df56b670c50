"""What several commands share: the options-file arguments, run folders, checkpoints as weights."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger("daclip_lora.apps.cli")

EXIT_USER_ERROR = 2


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (accelerate/torchrun set RANK), or a plain run."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def start_run(folder: Path, resume: bool, log_name: str) -> Optional[Path]:
    """Create a run folder (an existing one is archived unless resuming) and log into it (rank 0 only)."""
    import time

    if not is_main_process():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if folder.exists() and any(folder.iterdir()) and not resume:
        archived = folder.with_name(f"{folder.name}_archived_{stamp}")
        folder.rename(archived)
        logger.warning("%s existed: moved to %s", folder, archived)
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{log_name}_{stamp}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return log_file


def save_resolved(opt, folder: Path) -> None:
    import yaml

    from ...training.options import options_to_dict

    (folder / "options.yml").write_text(yaml.safe_dump(options_to_dict(opt), sort_keys=False))


# The short flags of the text-to-image LoRA scripts users come from, as option overrides.
SHORT_FLAGS = {"dataset": "datasets.train.dataroot", "prompts": "sd.validation_prompts", "steps": "train.niter",
               "batch": "datasets.train.batch_size", "unet_lr": "train.lr_G", "text_lr": "sd.text_encoder_lr"}


def load_cli_options(args: argparse.Namespace, is_train: bool):
    from ...training.options import load_options

    overrides = [f"{key}={getattr(args, dest)}" for dest, key in SHORT_FLAGS.items()
                 if getattr(args, dest, None) is not None]
    if getattr(args, "resume", False):
        overrides.append("path.resume_state=auto")
    return load_options(args.opt_file, is_train=is_train, root=args.root, overrides=overrides + (args.opt or []),
                        check_paths=not getattr(args, "no_check_paths", False))


def add_options_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-opt", "--options", dest="opt_file", type=Path, required=True, help="YAML options file")
    p.add_argument("--opt", action="append", metavar="KEY.SUB=VALUE",
                   help="override an option (repeatable), e.g. --opt train.lr_G=2e-4")
    p.add_argument("--root", type=Path, default=Path("."), help="folder for experiments/ and results/ (default: .)")


class MetricNames(argparse.Action):
    """``--metrics psnr ssim``, ``--metrics psnr,ssim`` or both mixed: one list of names."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        from ...metrics.protocol import split_metric_names

        setattr(namespace, self.dest, split_metric_names(values))


def weights_folder(args: argparse.Namespace) -> Path:
    """``--weights``: a restoration folder (or one above it), or a ``training_state/<step>`` checkpoint, exported
    into a temporary folder kept for the command's lifetime."""
    from ...restoration.locate import find_restoration_folder

    if (Path(args.weights) / "state.json").is_file():
        from ...training.export import export_to_temporary

        result, args.export_handle = export_to_temporary(args.weights)
        print(f"note: --weights {args.weights} is a training checkpoint: restoring with its step-{result.step} "
              f"{result.weights} weights" + (f" ({result.note})" if result.note else ""), file=sys.stderr)
        return result.folder
    return find_restoration_folder(args.weights)
