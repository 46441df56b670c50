"""Restoring a folder tree of photographs with a :class:`~daclip_lora.restoration.pipeline.RestorationPipeline`.

Every output mirrors its input's relative path and keeps what the file had (:func:`daclip_lora.data.images.
write_image`: format, bit depth, grayscale, alpha, ICC profile, EXIF with the orientation applied, JPEG quality),
unless ``output_format`` asks for another format. Each output is written atomically, so an interrupted run leaves
only whole files, and ``skip_existing`` resumes it. A file that cannot be read, restored or written is one line
in the report and the log; the run goes on.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..data.images import ImageError, image_size, list_images, read_photo, write_image

logger = logging.getLogger(__name__)

__all__ = ["FolderReport", "OUTPUT_FORMATS", "output_path", "restore_folder"]

#: ``output_format`` values: ``None`` keeps each input's format
OUTPUT_FORMATS = ("png", "jpg", "tif", "webp")


@dataclass
class FolderReport:
    """What :func:`restore_folder` did: written files, and every input it did not restore."""

    written: List[Path] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)  # not image files
    existing: List[Path] = field(default_factory=list)  # outputs already there (skip_existing)
    #: DA-CLIP's zero-shot degradation probabilities of each restored input (relative path -> word -> probability)
    degradations: Dict[str, Dict[str, float]] = field(default_factory=dict)


class _Done:
    """A finished future: a write done in place (no thread pool)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


def output_path(path: Path, root: Path, output_format: Optional[str] = None) -> Path:
    """Where the restored copy of ``path`` goes, relative to the output folder: its path relative to ``root``
    (a file given as the input: its name), with ``output_format``'s suffix when one is asked for."""
    relative = Path(path.name) if root.is_file() else path.relative_to(root)
    return relative.with_suffix(f".{output_format}") if output_format else relative


def _read_chunk(paths: List[Path]) -> Tuple[Dict[Path, Tuple[np.ndarray, Any]], List[Tuple[Path, str]]]:
    """Decode a batch of images (with what their outputs keep): ``(images, failures)``; runs in a thread."""
    images: Dict[Path, Tuple[np.ndarray, Any]] = {}
    failures: List[Tuple[Path, str]] = []
    for p in paths:
        try:
            images[p] = read_photo(p)
        except (ImageError, OSError) as e:
            failures.append((p, str(e)))
    return images, failures


def _complete(path: Path) -> bool:
    """An output that exists and decodes (``skip_existing``)."""
    try:
        read_photo(path)
    except (ImageError, OSError):
        return False
    return True


def _inputs(input: Path, output: Path, report: FolderReport) -> List[Path]:
    """The image files under ``input`` (recursively, in path order), never those under ``output``."""
    if input.is_file():
        return [input]
    if output.resolve() == input.resolve():
        raise ValueError(f"output folder {output} is the input folder: restored images would overwrite the "
                         f"inputs; choose another --output")
    files, others = list_images(input, strict=False, recursive=True, exclude=output)
    report.skipped.extend(others)
    for p in others:
        logger.warning("not an image file, not restored: %s", p)
    return files


def _chunks(files: List[Path], batch_size: int, report: FolderReport) -> List[List[Path]]:
    """The files in batches of one upright image size (from the headers), in path order within a size."""
    by_size: Dict[Tuple[int, int], List[Path]] = {}
    for p in files:
        try:
            by_size.setdefault(image_size(p), []).append(p)
        except ImageError as e:
            report.failed.append((p, str(e)))
            logger.error("%s", e)
    return [paths[i:i + batch_size] for paths in by_size.values() for i in range(0, len(paths), batch_size)]


def _restore_chunk(pipe: Any, chunk: List[Path], images: Dict[Path, Tuple[np.ndarray, Any]],
                   where: Callable[[Path], Path], output: Path, grid: bool, report: FolderReport,
                   sampling: Dict[str, Any], quality: Optional[int], submit: Callable[..., Any]) -> List[Any]:
    """Restore one batch of same-size images and hand each write to ``submit``: ``(future, input)`` pairs (grids
    have ``None``); ``where`` gives each output's path relative to ``output``. A failure inside the model (out
    of memory, a numerical error) is reported for these files and the run goes on; argument errors
    (``ValueError``) stop it."""
    lq = torch.stack([torch.from_numpy(images[p][0].transpose(2, 0, 1).copy()) for p in chunk])
    sampling = dict(sampling)
    word = sampling.pop("degradation", None)
    try:
        content, read = pipe.conditioning_embeddings(lq)
        degra = read if word is None else pipe.degradations.from_word(word, read)
        restored = pipe(lq, embeddings=(content, degra), **sampling)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        for p in chunk:
            report.failed.append((p, f"{p}: not restored ({message})"))
            logger.error("%s: not restored (%s)", p, message)
        return []
    words = pipe.degradations.words
    for p, probs in zip(chunk, words.as_dicts(words.from_embeddings(read))):
        report.degradations[where(p).as_posix()] = probs
    futures = []
    for p, r in zip(chunk, restored):
        arr = r.permute(1, 2, 0).numpy()
        lq_image, props = images[p]
        futures.append((submit(write_image, output / where(p), arr, keep=props, quality=quality), p))
        if grid:
            futures.append((submit(write_image, (output / "grids" / where(p)).with_suffix(".png"),
                                   np.concatenate([lq_image, arr], axis=1)), None))
    return futures


def restore_folder(pipe: Any, input: Union[str, Path], output: Union[str, Path], batch_size: int = 4,
                   grid: bool = False, progress: bool = True, quality: Optional[int] = None,
                   output_format: Optional[str] = None, skip_existing: bool = False, **sampling: Any) -> FolderReport:
    """Restore every image under ``input`` (a folder, searched recursively, or one image file) into ``output``.

    Images of one size (from their headers) are restored together, ``batch_size`` at a time; the next batch is
    decoded and the previous one written in background threads while the model runs, and only one batch is held
    in memory. ``grid`` also writes ``output/grids/<relative path>.png`` (LQ | restored). ``quality`` sets the JPEG
    (and lossy WebP) quality; ``output_format`` (one of :data:`OUTPUT_FORMATS`) changes every output's format.
    ``skip_existing`` leaves inputs whose output exists and decodes. ``sampling`` goes to the pipeline call
    (steps, scheduler, seed, tile_size, ...), but for ``degradation``, a word that replaces every image's
    degradation embedding. DA-CLIP's reading of each input goes to ``output/degradations.json``.
    """
    input, output = Path(input).expanduser(), Path(output).expanduser()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_FORMATS)} "
                         f"(or none to keep each input's format)")
    report = FolderReport()

    def where(p: Path) -> Path:
        return output_path(p, input, output_format)

    files = _inputs(input, output, report)
    if skip_existing:
        report.existing = [p for p in files if _complete(output / where(p))]
        files = [p for p in files if p not in set(report.existing)]
    chunks = _chunks(files, batch_size, report)
    sampling.setdefault("progress", progress)  # tiles (and steps) of each image too
    _run(pipe, chunks, where, output, grid, report, sampling, quality, progress)
    if report.degradations:
        _write_degradations(pipe, output, report, sampling.get("degradation"), keep_earlier=skip_existing)
    return report


def _run(pipe: Any, chunks: List[List[Path]], where: Callable[[Path], Path], output: Path, grid: bool,
         report: FolderReport, sampling: Dict[str, Any], quality: Optional[int], progress: bool) -> None:
    """Read ahead, restore and write the batches; a write that fails is one line in the report."""
    bar = tqdm(total=sum(len(c) for c in chunks), desc="restore", unit="image", disable=not progress)
    writes: List[Any] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-io") as pool:
        reading = pool.submit(_read_chunk, chunks[0]) if chunks else None
        for i, chunk in enumerate(chunks):
            images, failures = reading.result()
            if i + 1 < len(chunks):  # decode the next batch while this one is restored
                reading = pool.submit(_read_chunk, chunks[i + 1])
            for p, reason in failures:
                report.failed.append((p, reason))
                logger.error("%s", reason)
            ready = [p for p in chunk if p in images]
            if ready:
                writes.extend(_restore_chunk(pipe, ready, images, where, output, grid, report, sampling, quality,
                                             pool.submit))
            bar.update(len(chunk))
        for future, source in writes:
            try:
                path = future.result()
            except (OSError, ValueError) as e:
                reason = f"{source or 'grid'}: not written ({' '.join(str(e).split())})"
                report.failed.append((source, reason))
                logger.error("%s", reason)
                continue
            if source is not None:
                report.written.append(path)
    bar.close()


def _write_degradations(pipe: Any, output: Path, report: FolderReport, override: Optional[str],
                        keep_earlier: bool = False) -> None:
    """``output/degradations.json``: DA-CLIP's reading of every restored input, and the override if any
    (``keep_earlier``: with the readings of an earlier run of the same folder, for a resumed run)."""
    from .._utils.io import atomic_file

    path = output / "degradations.json"
    earlier = json.loads(path.read_text()).get("images", {}) if keep_earlier and path.is_file() else {}
    record = {"format_version": 1, "model": pipe.config.daclip_model, "logit_scale": pipe.degradations.words.scale,
              "override": override,
              "images": {**earlier, **{name: {"predicted": max(p, key=p.get), "probabilities": p}
                                       for name, p in report.degradations.items()}}}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
