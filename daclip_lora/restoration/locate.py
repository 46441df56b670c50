"""Find the restoration folder behind what a user passes as ``--weights`` (a leaf: no torch, so the CLI can check
paths before it loads anything heavy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Union

__all__ = ["CONFIG_NAME", "find_restoration_folder"]

#: the file that makes a folder a restoration folder (:mod:`.serialization` writes it)
CONFIG_NAME = "restoration.json"


def _demo_folder(path: Path) -> List[Path]:
    """The restoration folder a ``daclip-lora demo`` output names in ``summary.json`` (or, when the demo folder was
    moved since, the one under its ``runs/``)."""
    summary = path / "summary.json"
    if not summary.is_file():
        return []
    try:
        named = Path(json.loads(summary.read_text()).get("sd_lora", ""))
    except (ValueError, AttributeError):
        named = Path("")
    if str(named) and (named / CONFIG_NAME).is_file():
        return [named]
    return sorted(p.parent for p in path.glob(f"runs/experiments/*/models/restoration/{CONFIG_NAME}"))


def find_restoration_folder(weights: Union[str, Path]) -> Path:
    """The restoration folder behind ``weights``: the folder itself (it has ``restoration.json``), a folder holding
    exactly one restoration folder (for example the shipped ``tiny_restorer``), or a ``daclip-lora demo`` output
    folder.

    Raises:
        FileNotFoundError: none of these, or more than one candidate (the message lists them and what to pass).
    """
    path = Path(weights).expanduser()
    if (path / CONFIG_NAME).is_file():
        return path
    found = (_demo_folder(path) or sorted(p.parent for p in path.glob(f"*/{CONFIG_NAME}"))) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise FileNotFoundError(f"{path} holds {len(found)} restoration folders ({', '.join(str(f) for f in found)}); "
                                f"pass the one to use")
    raise FileNotFoundError(f"no restoration weights at {path}: pass the folder a restoration run wrote "
                            f"(experiments/<name>/models/restoration, with {CONFIG_NAME}), the folder above it, or "
                            f"a `daclip-lora demo` output folder" + ("" if path.exists() else
                                                                     " (the path does not exist)"))
