"""Run a block with a given number of torch CPU threads."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Use ``threads`` torch CPU threads inside the block (``None``: unchanged), restoring the setting afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
