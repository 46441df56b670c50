"""The benchmarks' one timing method: variants interleaved (A B A B ...), medians with their min-max range.

On a shared machine one background burst moves a ratio taken between two blocks of repeats, so every script
here times its variants in rounds (each variant once per round, after one warm-up each) and takes a ratio per
round, where a burst hits both sides of the pair.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, sync: Optional[Callable[[], None]] = None,
                warmup: bool = True) -> Dict[str, List[float]]:
    """Each function once as a warm-up, then ``repeats`` rounds A B A B ...: seconds per function and round.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after every timed call.
    """
    sync = sync or (lambda: None)
    if warmup:
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``median (min-max)`` of ``values * scale``."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def ratios(num: Sequence[float], den: Sequence[float]) -> List[float]:
    """Per-round ratios ``num[i] / den[i]`` (the two lists come from the same rounds)."""
    if len(num) != len(den):
        raise ValueError(f"per-round ratios need as many rounds on both sides, got {len(num)} and {len(den)}")
    return [a / b for a, b in zip(num, den)]


def fmt_ratio(num: Sequence[float], den: Sequence[float]) -> str:
    """The per-round ratio as ``median (min-max)`` with an ``x``."""
    r = ratios(num, den)
    return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"
