"""``daclip-lora list-models``: the registered DA-CLIP model names."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_list_models(args: argparse.Namespace) -> int:
    from ...clip.factory import list_models
    from ...clip.registry import list_models as registered

    for name in (list_models() if args.all else registered()):
        print(name)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("list-models", help="list the registered DA-CLIP model names")
    p.add_argument("--all", action="store_true", help="include open_clip's model names")
    p.set_defaults(func=_cmd_list_models)
