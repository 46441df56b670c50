"""``daclip-lora check-options``: an options file loaded, validated and printed resolved."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_options_args, load_cli_options


def _cmd_check_options(args: argparse.Namespace) -> int:
    import yaml

    from ...training.options import options_to_dict

    opt = load_cli_options(args, is_train=args.train)
    print(yaml.safe_dump(options_to_dict(opt), sort_keys=False), end="")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("check-options", help="load and validate an options file, print the resolved options",
                       description="Load a UIR-style options file exactly as train/test would and print the "
                                   "resolved, typed options as YAML.")
    add_options_args(p)
    p.add_argument("--train", action="store_true", help="resolve as a training file (default: test)")
    p.add_argument("--no-check-paths", action="store_true", help="do not require input paths to exist")
    p.set_defaults(func=_cmd_check_options)
