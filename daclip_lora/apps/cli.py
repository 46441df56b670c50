"""``daclip-lora`` command line: ``main`` parses and dispatches to one module per command (``apps/commands/``,
as diffusers' ``commands/``). User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from .._utils.compat import DependencyError, MissingExtraError
from .._utils.io import CheckpointWriteError

from .commands._common import EXIT_USER_ERROR, load_cli_options

_load_cli_options = load_cli_options  # the name tests and scripts import

# Errors that mean "the user gave us something wrong": shown as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, CheckpointWriteError, DependencyError)

# Commands that train or restore: the installed dependency versions are checked before they start.
CHECKED_COMMANDS = {"train", "test", "demo", "restore", "degradation", "evaluate", "app", "make-tiny-base", "export"}


#: the commands, one module each under ``apps/commands/`` (``register(sub)`` adds its parser), in ``--help`` order
COMMANDS = ("list_models", "env", "convert", "train", "test", "make_dataset", "demo", "restore", "degradation",
            "evaluate", "app", "make_tiny_base", "check_options", "export")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="daclip-lora",
        description="DA-CLIP on open_clip: checkpoints, controller LoRA and SD LoRA restoration.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def _user_errors() -> tuple:
    return USER_ERRORS + (MissingExtraError,)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(levelname)s: %(message)s",
    )
    try:
        if getattr(args, "precheck", None):  # the command's paths, before the dependency check imports anything
            args.precheck(args)
        if args.command in CHECKED_COMMANDS:
            from .._utils.compat import check_dependencies

            check_dependencies()
        return args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"daclip-lora {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # engine.TrainingInterrupted says where the checkpoint is
        print(f"daclip-lora {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
