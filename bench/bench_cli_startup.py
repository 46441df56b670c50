"""How long ``daclip-lora --help`` takes, for one or more source trees, interleaved (bench/_timing.py).

Each tree's CLI runs in a fresh interpreter started in the tree (first on ``sys.path``), so two checkouts (say, a
``git worktree`` of the previous commit and this one) are timed side by side in one run::

    git worktree add /tmp/before HEAD~1
    python bench/bench_cli_startup.py before=/tmp/before after=. --repeats 15
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import fmt, fmt_ratio, interleaved  # noqa: E402


def _runner(tree: Path, argv: list):
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = "import sys; from daclip_lora.apps.cli import main; sys.exit(main(sys.argv[1:]))"

    def run() -> None:
        # cwd=tree: ``python -c`` puts the working folder first on sys.path, ahead of PYTHONPATH
        subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", metavar="NAME=PATH", help="source trees to time (the first is the baseline)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--argv", nargs="+", default=["--help"], help="the CLI arguments to time (default: --help)")
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    times = interleaved({name: _runner(Path(path).resolve(), args.argv) for name, path in trees.items()},
                        args.repeats)
    base = next(iter(times))
    print(f"daclip-lora {' '.join(args.argv)}: seconds, median (min-max) of {args.repeats} interleaved rounds")
    for name, t in times.items():
        ratio = "" if name == base else f", {fmt_ratio(t, times[base])} of {base}"
        print(f"  {name}: {fmt(t)} s{ratio}")


if __name__ == "__main__":
    main()
