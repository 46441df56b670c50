"""Loading and converting DA-CLIP / CLIP checkpoints, without ever unpickling arbitrary objects.

Accepted inputs:

* the released DA-CLIP training dicts ``{'epoch', 'name', 'state_dict', 'optimizer'}`` (keys
  possibly prefixed ``module.``), bare state dicts in ``.pt``/``.pth``, and ``.safetensors`` files;
* plain CLIP state dicts, which initialise a DA-CLIP (``clip`` weights, controller copied from them,
  CLIP locked): the start of DA-CLIP training.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Union

import torch
from torch import nn

from .._utils.io import atomic_file
from .model import DaCLIP

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LoadResult",
    "checkpoint_kind",
    "convert_checkpoint",
    "load_checkpoint",
    "load_state_dict",
    "read_safetensors_metadata",
    "save_model",
    "strip_aliases",
    "write_safetensors",
]

StateDict = Dict[str, torch.Tensor]
_ALIAS = "visual."
_ALIASED = "clip.visual."
_CONVERT_HINT = (
    "If you trust the file, convert it once in a separate Python session: "
    "`import torch, safetensors.torch as st; ck = torch.load(PATH, weights_only=False); "
    "sd = ck.get('state_dict', ck); st.save_file({k: v.contiguous() for k, v in sd.items() "
    "if not k.removeprefix('module.').startswith('visual.')}, 'model.safetensors')` "
    "and load the .safetensors file instead."
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the model."""


class LoadResult(NamedTuple):
    """What :func:`load_checkpoint` did: the checkpoint kind and the keys it did not match."""

    kind: str
    missing_keys: List[str]
    unexpected_keys: List[str]


# ------------------------------------------------------------------------------ reading
def _torch_load(path: Path, device: Union[str, torch.device]) -> object:
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive ("PK"); the legacy format starts with a pickle opcode 0x80.
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (no zip archive or pickle header: starts with {head!r}); "
            f"expected a .pt/.pth/.bin file written by torch.save, or a .safetensors file"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path} needs arbitrary unpickling (it stores Python objects, not just tensors), "
                f"which can execute code, so it is refused. {_CONVERT_HINT}"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (cannot unpickle it: {e})") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); download it again") from None
    except RuntimeError as e:
        msg = str(e)
        if "central directory" in msg or "zip archive" in msg or "PytorchStreamReader" in msg:
            raise CheckpointError(
                f"{path} is truncated or corrupt (not a complete PyTorch zip archive); download it again"
            ) from None
        raise CheckpointError(f"{path} could not be loaded as a PyTorch checkpoint: {msg}") from None
    except Exception as e:  # the weights-only unpickler fails in many ways on damaged data
        raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _safetensors_load(path: Path, device: Union[str, torch.device]) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(f"{path} is not a valid .safetensors file (truncated or corrupt?): {e}") from None


def read_safetensors_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The string metadata stored in a ``.safetensors`` header (``{}`` if none).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is truncated or not a safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise CheckpointError(f"{path}: cannot read the .safetensors header ({e}); the file is truncated or not a "
                              f"safetensors file: download or convert it again") from None


def load_state_dict(checkpoint_path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> StateDict:
    """Read a state dict from ``.pt``/``.pth``/``.bin`` (``weights_only``) or ``.safetensors``.

    Unwraps a training dict's ``state_dict`` and strips a ``module.`` prefix (DDP).

    Raises:
        FileNotFoundError: the path does not exist or is a folder.
        CheckpointError: the file is truncated, not a checkpoint, needs unsafe unpickling, or does
            not hold a mapping of names to tensors.
    """
    path = Path(checkpoint_path).expanduser()
    obj = _read_checkpoint_file(path, device)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a state dict: {len(bad)} entries are not tensors (e.g. {bad[:3]})"
        )
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _read_checkpoint_file(path: Path, device: Union[str, torch.device]) -> object:
    """What the file holds: safetensors (by suffix or header) or a ``weights_only`` torch pickle."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} is a folder; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not complete")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _safetensors_load(path, device)
    return _torch_load(path, device)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length followed by the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# ---------------------------------------------------------------------------- matching
def checkpoint_kind(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> str:
    """``"daclip"`` for a DA-CLIP state dict, ``"clip"`` for a plain open_clip CLIP one."""
    keys = state_dict.keys()
    if any(k.startswith("visual_control.") for k in keys):
        return "daclip"
    if "token_embedding.weight" in keys and any(k.startswith("visual.") for k in keys):
        return "clip"
    if any(k.startswith("text.") for k in keys) and any(k.startswith("visual.") for k in keys):
        raise CheckpointError(
            f"{source} is an open_clip CustomTextCLIP state dict (keys 'text.*'); DA-CLIP wraps a plain "
            f"CLIP. Build that model with open_clip.create_model(..., force_custom_text=False) or convert "
            f"its text keys first."
        )
    raise CheckpointError(
        f"{source} is neither a DA-CLIP nor a CLIP state dict (no 'visual_control.*' keys and no "
        f"'visual.*' + 'token_embedding.weight'); first keys: {list(keys)[:5]}"
    )


def fill_aliases(state_dict: StateDict) -> StateDict:
    """Add the ``visual.*`` <-> ``clip.visual.*`` alias keys a file may have dropped."""
    out = dict(state_dict)
    for k, v in state_dict.items():
        if k.startswith(_ALIASED):
            out.setdefault(_ALIAS + k[len(_ALIASED):], v)
        elif k.startswith(_ALIAS):
            out.setdefault(_ALIASED + k[len(_ALIAS):], v)
    return out


def strip_aliases(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the duplicated ``visual.*`` keys of a DA-CLIP state dict (``clip.visual.*`` stays)."""
    return {k: v for k, v in state_dict.items()
            if not (k.startswith(_ALIAS) and _ALIASED + k[len(_ALIAS):] in state_dict)}


def _examples(keys: List[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _diagnose(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str) -> LoadResult:
    """Compare key sets and shapes; return the mismatches or raise a :class:`CheckpointError`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shape_bad = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if shape_bad:
        k = shape_bad[0]
        raise CheckpointError(
            f"{source} does not fit {what}: {len(shape_bad)} tensors have other shapes, e.g. {k!r} is "
            f"{tuple(state_dict[k].shape)} in the file but {tuple(expected[k].shape)} in the model. "
            f"Likely cause: wrong model size (e.g. a ViT-L-14 checkpoint for a ViT-B-32 model); pick the "
            f"model name that matches the checkpoint."
        )
    return LoadResult("", missing, unexpected)


def _raise_mismatch(result: LoadResult, source: str, what: str) -> None:
    missing, unexpected = result.missing_keys, result.unexpected_keys
    blocks = lambda ks: {k.split("resblocks.")[1].split(".")[0] for k in ks if "resblocks." in k}  # noqa: E731
    if blocks(missing) and not unexpected or blocks(unexpected) and not missing:
        cause = "wrong model size (the number of transformer blocks differs)"
    elif missing and all(k.startswith(("visual_control.", "logit_scale")) for k in missing):
        cause = "not a DA-CLIP checkpoint (no controller weights)"
    else:
        cause = "a checkpoint of another architecture"
    raise CheckpointError(
        f"{source} does not fit {what}: {len(missing)} missing keys ({_examples(missing) or '-'}) and "
        f"{len(unexpected)} unexpected keys ({_examples(unexpected) or '-'}). Likely cause: {cause}."
    )


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool,
                 source: str, what: str) -> LoadResult:
    result = _diagnose(model, state_dict, source, what)
    if strict and (result.missing_keys or result.unexpected_keys):
        _raise_mismatch(result, source, what)
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in result.unexpected_keys},
                          strict=False)
    return result


def load_checkpoint(
    model: nn.Module,
    checkpoint_path: Union[str, Path],
    strict: bool = True,
    device: Union[str, torch.device] = "cpu",
    controller_init: str = "by_name",
) -> LoadResult:
    """Load a checkpoint into a :class:`DaCLIP` (or a plain CLIP).

    For a :class:`DaCLIP`, a DA-CLIP checkpoint is loaded into the whole model; a plain CLIP
    checkpoint is loaded into ``model.clip``, then the controller is initialised from it
    (:meth:`DaCLIP.initial_controller`) and CLIP is locked (:meth:`DaCLIP.lock_clip`).

    Args:
        model: the model to fill.
        checkpoint_path: ``.pt``/``.pth``/``.bin``/``.safetensors`` file.
        strict: raise on missing or unexpected keys (shapes are always checked).
        device: where tensors are read to before copying into the model.
        controller_init: how a plain CLIP checkpoint initialises the controller: ``by_name`` or
            ``reference`` (the original code's by-position copy; see :meth:`DaCLIP.initial_controller`).

    Returns:
        :class:`LoadResult` with the detected kind and the unmatched keys (empty when strict).
    """
    source = str(checkpoint_path)
    state_dict = load_state_dict(checkpoint_path, device=device)
    kind = checkpoint_kind(state_dict, source)
    if isinstance(model, DaCLIP):
        if kind == "daclip":
            result = _load_strict(model, fill_aliases(state_dict), strict, source, "this DA-CLIP model")
        else:
            result = _load_strict(model.clip, state_dict, strict, source, "this DA-CLIP model's CLIP")
            model.initial_controller(controller_init)
            model.lock_clip()
            logger.info("%s is a plain CLIP checkpoint: loaded into model.clip, controller initialised "
                        "from it, CLIP locked", source)
    else:
        if kind != "clip":
            raise CheckpointError(
                f"{source} is a DA-CLIP checkpoint but the model is a {type(model).__name__}; build a "
                f"DA-CLIP model (e.g. create_model('daclip_ViT-B-32', pretrained=...)) to load it"
            )
        result = _load_strict(model, state_dict, strict, source, f"this {type(model).__name__}")
    return result._replace(kind=kind)


# ---------------------------------------------------------------------------- converting
def convert_checkpoint(
    src: Union[str, Path], dst: Union[str, Path], model_name: Optional[str] = None
) -> Dict[str, str]:
    """Rewrite a checkpoint as ``.safetensors``: no optimizer state, no duplicated alias keys.

    Args:
        src: checkpoint in any format :func:`load_state_dict` accepts.
        dst: output path; must end in ``.safetensors``.
        model_name: stored in the metadata (``model_name``) so loaders can check it.

    Returns:
        the metadata written.
    """
    dst = Path(dst).expanduser()
    _check_safetensors_suffix(dst)
    state_dict = load_state_dict(src)
    kind = checkpoint_kind(state_dict, str(src))
    return write_safetensors(strip_aliases(state_dict), dst, kind, model_name)


def _check_safetensors_suffix(dst: Path) -> None:
    if dst.suffix != ".safetensors":
        raise ValueError(f"output {dst} must end in .safetensors (e.g. {dst.with_suffix('.safetensors').name})")


def write_safetensors(state_dict: Mapping[str, torch.Tensor], dst: Union[str, Path], kind: str,
                      model_name: Optional[str] = None) -> Dict[str, str]:
    """Write a state dict atomically as ``.safetensors`` with ``kind``/``model_name`` metadata."""
    from safetensors.torch import save_file

    dst = Path(dst).expanduser()
    _check_safetensors_suffix(dst)
    metadata = {"format": "pt", "kind": kind, "producer": "daclip_lora"}
    if model_name:
        metadata["model_name"] = model_name
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_file(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    logger.info("wrote %s (%d tensors, %s)", dst, len(tensors), kind)
    return metadata


def save_model(model: nn.Module, dst: Union[str, Path], model_name: Optional[str] = None) -> Dict[str, str]:
    """Save a DaCLIP (without its alias keys) or CLIP as ``.safetensors``, loadable by ``pretrained=``."""
    kind = "daclip" if isinstance(model, DaCLIP) else "clip"
    return write_safetensors(strip_aliases(model.state_dict()), dst, kind, model_name)
