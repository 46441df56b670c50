"""``daclip-lora export``: a ``training_state/<step>`` checkpoint as the task's loadable folder.

A checkpoint holds only the trainable tensors (and their EMA); the run's resolved options
(``experiments/<name>/options.yml``, written at the start of training) say how to rebuild the model around them.
The model is built without reading any dataset, the EMA weights are used when the run kept them (as the end of
training does), and the task writes its folder: a restoration folder (``restore --weights``, ``test``,
``RestorationPipeline.from_pretrained``), a controller-LoRA folder or a diffusers LoRA folder. The fusion head of
a restoration run is fitted at the end of training only; an exported intermediate checkpoint keeps it as it is
in the checkpoint (unfitted: the restorer then returns the decoded image, no blend), and says so.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

logger = logging.getLogger(__name__)

__all__ = ["ExportResult", "export_checkpoint", "is_training_state", "export_to_temporary"]

PathLike = Union[str, Path]


def is_training_state(folder: PathLike) -> bool:
    """Whether ``folder`` is a complete ``training_state/<step>`` (or ``best``) checkpoint."""
    folder = Path(folder)
    return (folder / "state.json").is_file() and (folder / "trainable.safetensors").is_file()


def _raw_options(resolved: Dict[str, Any]) -> Dict[str, Any]:
    """An options mapping from a resolved ``options.yml``: the kept-and-ignored ``extra`` keys go back into their
    blocks and the loader's own records are dropped."""
    out: Dict[str, Any] = {}
    for key, value in resolved.items():
        if key in ("ignored", "source", "is_train", "resume_state"):
            continue
        if key == "extra" and isinstance(value, dict):
            out.update(value)
        elif isinstance(value, dict):
            out[key] = _raw_options(value) if key != "datasets" else {k: _raw_options(v) for k, v in value.items()}
        else:
            out[key] = value
    return out


def _only_what_the_task_reads(raw: Dict[str, Any], task: str) -> Dict[str, Any]:
    """The resolved file holds every block with its defaults; keep, in our strict blocks, the keys ``task`` reads
    (the loader refuses a key a task never reads)."""
    from .options import task_keys

    keys = task_keys(task)

    def keep(block: Dict[str, Any], prefix: str) -> Dict[str, Any]:
        out = {}
        for k, v in block.items():
            dotted = f"{prefix}.{k}"
            if any(dotted == r or dotted.startswith(r + ".") for r in keys):
                out[k] = v
            elif isinstance(v, dict) and any(r.startswith(dotted + ".") for r in keys):
                out[k] = keep(v, dotted)
        return out

    for block in ("daclip", "controller", "sd", "runtime", "sampling"):
        if isinstance(raw.get(block), dict):
            raw[block] = keep(raw[block], block)
    return raw


def run_options(checkpoint: Path, options: Optional[PathLike] = None) -> Any:
    """The options of the run that wrote ``checkpoint`` (``experiments/<name>/options.yml``, or ``options``)."""
    from .options import load_options, parse_options

    if options is not None:
        return load_options(options, is_train=True)
    path = checkpoint.parent.parent / "options.yml"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: the run's options ({path}) are missing; pass the training options "
                                f"file with --options TRAIN.yml")
    resolved = yaml.safe_load(path.read_text(encoding="utf-8"))
    root = (resolved.get("path") or {}).get("root", ".")
    raw = _only_what_the_task_reads(_raw_options(resolved), resolved.get("task", "restoration"))
    opt, _ = parse_options(raw, is_train=True, root=root, source=str(path))
    return opt


class ExportResult:
    """What :func:`export_checkpoint` wrote: the folder, the task, the step and which weights (EMA or raw)."""

    def __init__(self, folder: Path, task: str, step: int, weights: str, note: str = ""):
        self.folder, self.task, self.step, self.weights, self.note = folder, task, step, weights, note


def _checkpoint_weights(checkpoint: Path, raw: bool) -> Tuple[Dict[str, Any], str]:
    from safetensors.torch import load_file

    ema = checkpoint / "ema.safetensors"
    if ema.is_file() and not raw:
        return load_file(str(ema)), "EMA"
    return load_file(str(checkpoint / "trainable.safetensors")), "raw"


def export_checkpoint(checkpoint: PathLike, output: PathLike, options: Optional[PathLike] = None,
                      raw: bool = False) -> ExportResult:
    """Write ``checkpoint``'s weights (EMA unless ``raw``) as the task's folder ``output``.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a complete training-state folder, or the run's options are gone.
        ValueError: the checkpoint does not fit the model the options build.
    """
    import json

    from .tasks import get_task

    checkpoint = Path(checkpoint).expanduser()
    if not is_training_state(checkpoint):
        raise FileNotFoundError(f"{checkpoint} is not a training-state folder (no state.json and "
                                f"trainable.safetensors); pass experiments/<name>/training_state/<step> or .../best")
    opt = run_options(checkpoint, options)
    trainer = get_task(opt.task).trainer_class()(opt, data=False)
    state, weights = _checkpoint_weights(checkpoint, raw)
    trainer.load_trainable_state(state)
    folder = trainer.export(Path(output).expanduser())
    fusion = getattr(getattr(trainer, "model", None), "fusion", None)
    note = ("the fusion head is not fitted (it is fitted at the end of training); this restorer returns the "
            "decoded image without the head's blend") if fusion is not None and not fusion.fitted else ""
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    logger.info("exported %s (step %d, %s weights) to %s", checkpoint, step, weights, folder)
    return ExportResult(folder, opt.task, step, weights, note)


def export_to_temporary(checkpoint: PathLike) -> Tuple[ExportResult, "tempfile.TemporaryDirectory[str]"]:
    """``checkpoint`` exported into a temporary folder that lives as long as the returned handle."""
    handle = tempfile.TemporaryDirectory(prefix="daclip_lora_export_")
    return export_checkpoint(checkpoint, Path(handle.name) / "export"), handle
