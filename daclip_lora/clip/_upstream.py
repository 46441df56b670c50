"""Bind the real ``open_clip_torch`` package as ``open_clip``, even when a folder shadows it.

DA-CLIP / universal-image-restoration checkouts carry their own fork in a folder named ``open_clip/``
at the repository root, and their scripts put that root first on ``sys.path``. A plain ``import
open_clip`` then finds the fork, not the installed package daclip_lora is built on. This module runs
before anything else in daclip_lora imports ``open_clip``:

* no shadowing: nothing happens (``import open_clip`` is the installed package);
* a folder shadows the installed package and nothing has imported it yet: the installed package is
  loaded from its own location and registered as ``sys.modules['open_clip']``, so daclip_lora *and* any
  later ``import open_clip`` of the user's code get the installed package (the fork is never imported;
  its folder is left untouched on disk);
* the fork was already imported in this process (``import open_clip`` ran before ``import daclip_lora``):
  a one-line :class:`ImportError` names the folder and the fix, because two different ``open_clip``
  packages cannot share one process safely.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

DISTRIBUTION = "open_clip_torch"


def installed_open_clip() -> Optional[Path]:
    """The ``open_clip/__init__.py`` of the installed ``open_clip_torch`` distribution (``None``: not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    init = Path(dist.locate_file("open_clip/__init__.py"))
    if init.is_file():
        return init.resolve()
    for f in dist.files or ():  # editable installs: follow the recorded files
        if str(f).replace("\\", "/").endswith("open_clip/__init__.py"):
            path = Path(f.locate())
            if path.is_file():
                return path.resolve()
    return None


def _origin(module_or_spec) -> Optional[Path]:
    origin = getattr(module_or_spec, "origin", None) or getattr(module_or_spec, "__file__", None)
    return Path(origin).resolve() if origin else None


def bind_open_clip() -> None:
    """Make ``sys.modules['open_clip']`` the installed ``open_clip_torch`` (see the module docstring)."""
    real = installed_open_clip()
    loaded = sys.modules.get("open_clip")
    if real is None:
        if loaded is None and importlib.util.find_spec("open_clip") is None:
            raise ImportError(f"daclip_lora needs the {DISTRIBUTION} package: pip install {DISTRIBUTION}")
        return  # an unusual install (e.g. vendored); trust what Python finds
    if loaded is not None:
        if _origin(loaded) != real:
            raise ImportError(
                f"another open_clip was imported before daclip_lora: {_origin(loaded)} (a DA-CLIP/UIR fork?) "
                f"shadows the installed {DISTRIBUTION} at {real.parent}; import daclip_lora before anything "
                f"imports open_clip, or rename/remove that folder")
        return
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and _origin(spec) == real:
        return
    shadow = _origin(spec) if spec is not None else None
    logger.info("a folder named open_clip shadows the installed %s (%s): loading the installed package from %s",
                DISTRIBUTION, shadow, real.parent)
    spec = importlib.util.spec_from_file_location("open_clip", real, submodule_search_locations=[str(real.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["open_clip"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("open_clip", None)
        for name in [n for n in sys.modules if n.startswith("open_clip.")]:
            sys.modules.pop(name, None)
        raise
