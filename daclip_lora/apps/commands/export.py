"""``daclip-lora export``: a training checkpoint as a restoration folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from ...training.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.output, options=args.options, raw=args.raw)
    print(f"exported step {result.step} ({result.weights} weights) of a {result.task} run -> {result.folder}")
    if result.note:
        print(f"note: {result.note}")
    return 0


def _export_paths(args: argparse.Namespace) -> None:
    from ...training.export import is_training_state

    if not is_training_state(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} is not a training-state folder (no state.json and "
                                f"trainable.safetensors); pass experiments/<name>/training_state/<step> or .../best")
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output {args.output} is not empty; pass --overwrite to replace it")


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint into a folder restore/test/from_pretrained load",
                       description="Write the weights of a training_state/<step> (or training_state/best) folder as "
                                   "the task's folder: a restoration folder, a controller-LoRA folder or a "
                                   "diffusers LoRA. The model is rebuilt from the run's options.yml; no dataset is "
                                   "read. EMA weights are used when the run kept them.")
    p.add_argument("--checkpoint", type=Path, required=True, help="experiments/<name>/training_state/<step>")
    p.add_argument("--output", type=Path, required=True, help="the folder to write")
    p.add_argument("--options", type=Path, default=None,
                   help="the run's training options (default: experiments/<name>/options.yml beside the checkpoints)")
    p.add_argument("--raw", action="store_true", help="the raw weights, not their EMA")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.set_defaults(func=_cmd_export, precheck=_export_paths)
