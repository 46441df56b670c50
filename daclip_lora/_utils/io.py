"""Atomic writes: a file or folder is written beside its destination and swapped in only when complete, so a
crash or kill leaves either the old version or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Union

__all__ = ["CheckpointWriteError", "atomic_dir", "atomic_file", "remove_tree", "replace_path", "tmp_sibling"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointWriteError(OSError):
    """A checkpoint or output could not be written (full disk, read-only folder); nothing partial was kept."""


def tmp_sibling(path: PathLike) -> Path:
    """``<path>.tmp`` beside ``path``, emptied of any leftover from an earlier crash."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    return tmp


def remove_tree(path: PathLike) -> None:
    """Delete the folder ``path`` so that a kill mid-way never leaves it half-deleted under its own name.

    It is first renamed (atomic) to ``<path>.old`` and only then deleted; a ``.old`` left by a kill is
    removed by the next call for the same path.
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    if path.is_dir():
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)


def replace_path(tmp: PathLike, final: PathLike) -> Path:
    """Move the complete ``tmp`` (file or folder) to ``final``, replacing what was there."""
    final = Path(final)
    if Path(tmp).is_dir() and final.is_dir():
        remove_tree(final)  # a kill here leaves no half of ``final``: it is absent, the whole tmp still there
    os.replace(tmp, final)
    return final


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path``, on an exception it is removed."""
    tmp = tmp_sibling(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, path)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on an exception it is removed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace_path(tmp, path)
