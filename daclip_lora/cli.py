"""``daclip-lora`` command line. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger("daclip_lora.cli")

EXIT_USER_ERROR = 2
# Errors that mean "the user gave us something wrong": shown as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _cmd_list_models(args: argparse.Namespace) -> int:
    from . import list_models
    from .registry import list_models as registered

    for name in (list_models() if args.all else registered()):
        print(name)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint, load_state_dict
    from .factory import match_model_names

    model_name = args.model
    if model_name is None:
        matches = match_model_names(load_state_dict(args.input))
        model_name = matches[0] if len(matches) == 1 else None
        logger.info("architecture matches: %s", ", ".join(matches) or "no registered model")
    meta = convert_checkpoint(args.input, args.output, model_name=model_name)
    print(f"wrote {args.output} ({meta['kind']}, model_name={meta.get('model_name', '?')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daclip-lora",
        description="DA-CLIP on open_clip: checkpoints, controller LoRA and SD LoRA restoration.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list-models", help="list the registered DA-CLIP model names")
    p.add_argument("--all", action="store_true", help="include open_clip's model names")
    p.set_defaults(func=_cmd_list_models)

    p = sub.add_parser(
        "convert",
        help="rewrite a DA-CLIP/CLIP checkpoint as .safetensors (no optimizer, no alias keys)",
        description="Rewrite a DA-CLIP or CLIP checkpoint (.pt/.pth/.safetensors) as .safetensors, "
                    "dropping optimizer state and the duplicated 'visual.*' alias keys.",
    )
    p.add_argument("input", type=Path, help="checkpoint to read (e.g. daclip_ViT-B-32.pt)")
    p.add_argument("output", type=Path, help="output file, ending in .safetensors")
    p.add_argument("--model", default=None,
                   help="model name to record in the metadata (default: inferred from the tensor shapes)")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(levelname)s: %(message)s",
    )
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"daclip-lora {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
