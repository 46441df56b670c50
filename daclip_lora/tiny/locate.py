"""Where the tiny pretrained bases that ship with the package live (a leaf: imports nothing of daclip_lora).

The recipes that make them are in :mod:`daclip_lora.tiny.recipes` (``daclip-lora make-tiny-base``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EMBEDDED_DACLIP", "EMBEDDED_RESTORER", "EMBEDDED_SD", "demonstration_notice", "embedded_daclip_base",
           "embedded_restorer", "embedded_sd_base"]

ASSETS = Path(__file__).resolve().parent / "assets"
#: Where the shipped tiny pretrained SD folder lives inside the installed package.
EMBEDDED_SD = ASSETS / "tiny_sd"
#: The shipped tiny DA-CLIP base whose vision tower was pretrained on the synthetic degradations.
EMBEDDED_DACLIP = ASSETS / "tiny_daclip"
#: The shipped trained tiny restorer (DA-CLIP + controller LoRA + restoration LoRA) that ``daclip-lora app`` uses.
EMBEDDED_RESTORER = ASSETS / "tiny_restorer"


def demonstration_notice(flags: str) -> str:
    """The one line ``restore``, ``degradation`` and ``app`` print when they run on the shipped tiny models."""
    return ("note: these are the shipped tiny demonstration models (a 1.4M-parameter SD and a tiny DA-CLIP, "
            "trained on 64 px synthetic degradations of 11 scikit-image photographs), not a photo restorer; "
            f"for real weights pass {flags}")


def embedded_sd_base() -> Path:
    """The shipped tiny pretrained SD folder (raises with the re-create command if it is missing)."""
    if not (EMBEDDED_SD / "model_index.json").is_file():
        raise FileNotFoundError(f"the embedded tiny SD base is missing from {EMBEDDED_SD}; re-create it with "
                                f"`daclip-lora make-tiny-base {EMBEDDED_SD}` (about 28 minutes on 2 CPU cores)")
    return EMBEDDED_SD


def embedded_daclip_base() -> Path:
    """The shipped tiny pretrained DA-CLIP checkpoint (raises with the re-create command if it is missing)."""
    path = EMBEDDED_DACLIP / "daclip_tiny.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the embedded tiny DA-CLIP base is missing ({path}); re-create it with "
                                f"`daclip-lora make-tiny-base {EMBEDDED_DACLIP} --daclip` (about 15 minutes on 2 "
                                f"CPU cores)")
    return path


def embedded_restorer() -> Path:
    """The shipped tiny restorer's restoration folder; its ``restoration.json`` points, by paths relative to it, at
    the shipped SD base, DA-CLIP checkpoint and controller LoRA.

    Raises:
        FileNotFoundError: a part is missing (with the command that re-creates it).
    """
    folder = EMBEDDED_RESTORER
    parts = (folder / "restoration" / "restoration.json", embedded_sd_base(), embedded_daclip_base(),
             folder / "controller_lora")
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the embedded tiny restorer is incomplete (missing {', '.join(missing)}); re-create "
                                f"it with `daclip-lora make-tiny-base {folder} --restorer` (about 4 minutes on 2 CPU "
                                f"cores), or pass trained weights with --weights")
    return folder / "restoration"
