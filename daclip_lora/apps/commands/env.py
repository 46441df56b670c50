"""``daclip-lora env``: the installed dependency versions and whether they are supported."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import EXIT_USER_ERROR


def _cmd_env(args: argparse.Namespace) -> int:
    """Print the versions that matter for a bug report, and any unsupported one (exit 2 then)."""
    import platform

    from ..._utils.version import __version__
    from ..._utils.compat import SUPPORTED, dependency_problems, installed_versions

    print(f"daclip_lora {__version__}, Python {platform.python_version()} on {platform.platform()}")
    for name, version in installed_versions().items():
        print(f"  {name:<16} {version or 'not installed':<16} supported: {SUPPORTED[name].specifier()}")
    problems = dependency_problems()
    for problem in problems:
        print(f"unsupported: {problem}", file=sys.stderr)
    return EXIT_USER_ERROR if problems else 0


def register(sub: Any) -> None:
    p = sub.add_parser("env", help="print the installed dependency versions and whether they are supported")
    p.set_defaults(func=_cmd_env)
