"""Fuzz mode: the suite's seeded option/image/checkpoint fuzzing with more option mutants.

    python bench/fuzz.py --cases 2000

prints, per input family, how many inputs were tried, accepted and refused with a one-line error (any other
exception fails the run).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000, help="mutants per shipped options file (CI: 200)")
    args = ap.parse_args()
    test = Path(__file__).resolve().parents[1] / "tests" / "test_fuzz.py"
    env = {**os.environ, "DACLIP_FUZZ_CASES": str(args.cases), "HF_HUB_OFFLINE": "1"}
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], env=env))
