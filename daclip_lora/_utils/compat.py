"""The dependency versions daclip_lora supports, checked in one place.

``SUPPORTED`` is the single source of the version ranges: ``setup.py``'s ``install_requires`` is tested against
it, the CLI checks it before any command that trains or restores, and ``daclip-lora env`` prints it. A user with
an unsupported combination gets one line naming the package, the installed version, the range and the fix,
instead of a ``ValueError`` deep inside training.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from packaging.version import InvalidVersion, Version

__all__ = ["DependencyError", "MissingExtraError", "Requirement", "SUPPORTED", "check_dependencies", "dependency_problems",
           "installed_versions"]


class DependencyError(RuntimeError):
    """The installed versions of daclip_lora's dependencies are a combination it does not support."""


@dataclass(frozen=True)
class Requirement:
    """A supported version range ``[minimum, below)`` of one distribution, and why its bounds are there."""

    minimum: str
    below: Optional[str] = None
    why: str = ""

    def specifier(self) -> str:
        """The range as pip writes it, e.g. ``>=3.0,<4``."""
        return f">={self.minimum}" + (f",<{self.below}" if self.below else "")

    def admits(self, version: str) -> bool:
        v = Version(version).release  # compare releases: 2.14.1+cu128 and 0.42.0.dev0 count as their release
        return v >= Version(self.minimum).release and (self.below is None or v < Version(self.below).release)


#: distribution name -> supported range. The bounds are the oldest versions whose APIs we call.
SUPPORTED: Dict[str, Requirement] = {
    "torch": Requirement("2.1"),
    "open_clip_torch": Requirement("3.0", "4", why="the 3.x factory and model-config API we plug into"),
    "timm": Requirement("1.0"),
    "peft": Requirement("0.17", why="LoRA on nn.MultiheadAttention (the controller); diffusers' adapter code "
                                    "asks for 0.17"),
    "diffusers": Requirement("0.30", why="UNet2DConditionModel and the SD LoRA file format"),
    "transformers": Requirement("4.40", why="CLIPTextModel; its PEFT mixin is not used (see inject_lora)"),
    "accelerate": Requirement("0.30"),
    "safetensors": Requirement("0.4"),
}


class MissingExtraError(RuntimeError):
    """An optional dependency (an extra, such as the app's Gradio) is not installed (the message says which)."""


def installed_versions(names: Optional[List[str]] = None) -> Dict[str, Optional[str]]:
    """The installed version of each distribution (``None`` when it is not installed)."""
    out: Dict[str, Optional[str]] = {}
    for name in names or list(SUPPORTED):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _diffusers_min_peft() -> Optional[str]:
    """The minimum peft that the installed diffusers' own adapter code asks for, if it says."""
    try:
        from diffusers.utils.constants import MIN_PEFT_VERSION
    except ImportError:
        return None
    return str(MIN_PEFT_VERSION)


def dependency_problems(versions: Optional[Mapping[str, Optional[str]]] = None,
                        diffusers_min_peft: Optional[str] = None) -> List[str]:
    """One sentence per unsupported or missing dependency; empty when the combination is supported.

    Args:
        versions: distribution -> version (default: what is installed).
        diffusers_min_peft: the minimum peft the installed diffusers asks for (read from diffusers when
            ``versions`` is not given).
    """
    if versions is None:
        versions = installed_versions()
        diffusers_min_peft = _diffusers_min_peft()
    problems = []
    for name, req in SUPPORTED.items():
        version = versions.get(name)
        if version is None:
            problems.append(f"{name} is not installed; daclip_lora needs {name}{req.specifier()}: "
                            f"pip install '{name}{req.specifier()}'")
            continue
        try:
            ok = req.admits(version)
        except InvalidVersion:
            ok = False
        if not ok:
            why = f" ({req.why})" if req.why else ""
            problems.append(f"{name} {version} is not supported: daclip_lora needs {name}{req.specifier()}{why}; "
                            f"pip install '{name}{req.specifier()}' (or -c constraints.txt for the tested pins)")
    peft = versions.get("peft")
    peft_flagged = any(p.startswith("peft ") for p in problems)
    if peft and diffusers_min_peft and not peft_flagged and Version(peft).release < Version(diffusers_min_peft).release:
        problems.append(f"peft {peft} is older than the installed diffusers {versions.get('diffusers')} needs "
                        f"(>= {diffusers_min_peft}); pip install 'peft>={diffusers_min_peft}'")
    return problems


def check_dependencies() -> None:
    """Raise :class:`DependencyError` listing every problem :func:`dependency_problems` finds."""
    problems = dependency_problems()
    if problems:
        raise DependencyError("; ".join(problems))
