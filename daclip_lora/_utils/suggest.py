"""``Did you mean`` hints for error messages."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["suggest"]


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """``" Did you mean: a, b?"`` for the closest matches of ``name``, or ``""``."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
