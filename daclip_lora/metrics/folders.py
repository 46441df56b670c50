"""``daclip-lora evaluate``: pair restored images with their ground truth by name and score them.

Pairs are made by relative path without extension: ``restored/<sub>/x.png`` is matched with
``gt/<sub>/x.*``, then ``gt/<sub>/GT/x.*`` (UIR's ``<degradation>/GT`` test trees), then ``gt/x.*``. Images in
sub-folders are grouped by their first folder (per degradation for UIR ``MD`` trees); ``grids/`` folders (what
``test`` writes beside its outputs) are skipped. Reports carry the protocol of every number.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from .._utils.io import atomic_file
from ..data.images import IMAGE_EXTENSIONS, read_image
from .._utils.compat import MissingExtraError
from .iqa import FolderFid, Metric, create_metrics, pyiqa_version
from .weights import MissingMetricWeights
from .protocol import DEFAULT_METRICS, default_metrics, resolve_metrics

logger = logging.getLogger(__name__)

__all__ = ["EvaluationReport", "ImagePair", "evaluate_folders", "format_evaluation", "pair_folders",
           "write_evaluation", "FORMAT_VERSION"]

FORMAT_VERSION = 1
SKIPPED_FOLDERS = ("grids",)


@dataclass(frozen=True)
class ImagePair:
    """A restored image, its ground truth (None for no-reference evaluation) and its group (first sub-folder)."""

    name: str
    group: str
    restored: Path
    gt: Optional[Path]


def _images_under(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") or part in SKIPPED_FOLDERS for part in p.relative_to(root).parts))


def _find_gt(gt_root: Path, rel: Path) -> Optional[Path]:
    for folder in (gt_root / rel.parent, gt_root / rel.parent / "GT", gt_root):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{rel.stem}{ext}", folder / f"{rel.stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def pair_folders(restored: Union[str, Path], gt: Optional[Union[str, Path]] = None) -> List[ImagePair]:
    """Every image under ``restored`` with its ground truth under ``gt``.

    Raises:
        FileNotFoundError: a folder does not exist, or ``restored`` holds no image.
        ValueError: some restored images have no ground truth (the message names them).
    """
    restored = Path(restored)
    for label, folder in (("restored", restored), ("ground-truth", gt)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder {folder} does not exist")
    images = _images_under(restored)
    if not images:
        raise FileNotFoundError(f"restored folder {restored} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    pairs, unmatched = [], []
    for path in images:
        rel = path.relative_to(restored)
        match = _find_gt(Path(gt), rel) if gt is not None else None
        if gt is not None and match is None:
            unmatched.append(str(rel))
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        pairs.append(ImagePair(str(rel.with_suffix("")), group, path, match))
    if unmatched:
        raise ValueError(f"{len(unmatched)} of {len(images)} restored images have no ground truth in {gt} "
                         f"(matched by name without extension): {', '.join(unmatched[:5])}"
                         f"{' ...' if len(unmatched) > 5 else ''}")
    return pairs


class EvaluationReport(dict):
    """``{"format_version", "protocol", "per_image": [...], "groups": {group: {metric: mean, "n"}},
    "mean": {...}, "folder": {"fid": ...}, "skipped": {metric: reason}}``."""


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(read_image(path))).permute(2, 0, 1)


def _batches(pairs: Sequence[ImagePair], batch_size: int) -> Iterator[List[ImagePair]]:
    """Consecutive pairs of one image size, at most ``batch_size`` at a time."""
    batch: List[ImagePair] = []
    size = None
    for pair in pairs:
        shape = _size(pair.restored)
        if batch and (len(batch) == batch_size or shape != size):
            yield batch
            batch = []
        batch.append(pair)
        size = shape
    if batch:
        yield batch


def _size(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _score_batch(batch: List[ImagePair], metrics: Sequence[Metric]) -> List[Dict[str, Any]]:
    restored = torch.stack([_load(p.restored) for p in batch])
    gt = None
    if batch[0].gt is not None:
        gts = [_load(p.gt) for p in batch]
        for p, g in zip(batch, gts):
            if tuple(g.shape) != tuple(restored.shape[1:]):
                raise ValueError(f"{p.restored} is {tuple(restored.shape[2:])} pixels but its ground truth {p.gt} "
                                 f"is {tuple(g.shape[1:])}: restore at the ground truth's size")
        gt = torch.stack(gts)
    rows = [{"name": p.name, "group": p.group} for p in batch]
    for metric in metrics:
        try:
            scores = metric(restored, gt if metric.spec.mode == "FR" else None)
        except (RuntimeError, AssertionError, IndexError) as exc:  # e.g. NIQE on an image under 96 px
            names = ", ".join(str(p.restored) for p in batch)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"metric {metric.name!r} failed on {names} ({restored.shape[3]}x{restored.shape[2]} "
                             f"px): {first}") from exc
        for row, s in zip(rows, scores.tolist()):
            row[metric.name] = float(s)
    return rows


def _means(rows: List[Dict[str, Any]], names: Sequence[str]) -> Dict[str, Any]:
    return {**{n: float(np.mean([r[n] for r in rows])) for n in names}, "n": len(rows)}


def evaluate_folders(restored: Union[str, Path], gt: Optional[Union[str, Path]] = None,
                     metrics: Sequence[str] = DEFAULT_METRICS, device: Union[str, torch.device] = "cpu",
                     batch_size: int = 1, crop_border: int = 0, weights_dir: Optional[Union[str, Path]] = None,
                     skip_missing: bool = False, progress: bool = False) -> EvaluationReport:
    """Score every restored image (and FID of the folder) with ``metrics``; the report carries the protocol.

    Args:
        metrics: names from :data:`~daclip_lora.metrics.protocol.METRICS`; full-reference ones and ``fid`` need
            ``gt``. Without ``gt`` the no-reference metrics among the defaults are computed.
        batch_size: images of one size scored together.
        skip_missing: metrics whose weights or pyiqa are missing are listed under ``skipped`` instead of raising.
    """
    if tuple(metrics) == DEFAULT_METRICS:
        metrics = default_metrics(has_gt=gt is not None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    specs = resolve_metrics(metrics, has_gt=gt is not None)
    pairs = pair_folders(restored, gt)
    image_metrics, skipped = create_metrics(specs, device, crop_border, weights_dir, skip_missing)
    fid = _fid(specs, device, weights_dir, skip_missing, skipped)
    names = [m.name for m in image_metrics]
    rows: List[Dict[str, Any]] = []
    from tqdm.auto import tqdm

    with tqdm(total=len(pairs), desc="evaluate", unit="img", disable=not progress) as bar:
        for batch in _batches(pairs, batch_size):
            rows.extend(_score_batch(batch, image_metrics))
            bar.update(len(batch))
    folder = {} if fid is None else {"fid": _fid_of_pairs(fid, pairs)}
    groups = {g: _means([r for r in rows if r["group"] == g], names) for g in sorted({r["group"] for r in rows}) if g}
    return EvaluationReport(
        format_version=FORMAT_VERSION,
        protocol=_protocol(image_metrics, specs, restored, gt, crop_border, folder),
        per_image=rows, groups=groups, mean=_means(rows, names), folder=folder, skipped=skipped)


def _fid(specs, device, weights_dir, skip_missing: bool, skipped: Dict[str, str]) -> Optional[FolderFid]:
    if not any(s.mode == "FID" for s in specs):
        return None
    try:
        return FolderFid(device, weights_dir)
    except (MissingMetricWeights, MissingExtraError) as exc:
        if not skip_missing:
            raise
        skipped["fid"] = str(exc)
        return None


def _fid_of_pairs(fid: FolderFid, pairs: Sequence[ImagePair]) -> float:
    """FID of exactly the evaluated images: pyiqa walks whole trees (a UIR tree's LQ/ would count), so the
    pairs are linked into two flat temporary folders."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="daclip_lora_fid_") as tmp:
        for side in ("restored", "gt"):
            (Path(tmp) / side).mkdir()
        for i, pair in enumerate(pairs):
            for side, path in (("restored", pair.restored), ("gt", pair.gt)):
                (Path(tmp) / side / f"{i:06d}{path.suffix.lower()}").symlink_to(path.resolve())
        return fid(Path(tmp) / "restored", Path(tmp) / "gt")


def _protocol(metrics: Sequence[Metric], specs, restored, gt, crop_border: int, folder: Dict[str, float]
              ) -> Dict[str, Any]:
    proto: Dict[str, Any] = {m.name: m.protocol() for m in metrics}
    if "fid" in folder:
        fid = next(s for s in specs if s.mode == "FID")
        proto["fid"] = {**fid.protocol(), "implementation": f"pyiqa {pyiqa_version()}", "reference_folder": str(gt),
                        "mode": "clean", "images": "the evaluated pairs only (restored set vs their ground truths)"}
    return {"metrics": proto, "restored": str(restored), "gt": None if gt is None else str(gt),
            "crop_border": crop_border, "pairing": "relative path without extension",
            "pyiqa_version": pyiqa_version(), "torch_version": torch.__version__, "python": platform.python_version(),
            "input": "RGB in [0, 1], alpha dropped"}


def write_evaluation(report: EvaluationReport, out_dir: Union[str, Path]) -> List[Path]:
    """``metrics.json`` (everything), ``metrics.csv`` (one row per image) and ``metrics_summary.csv``
    (one row per group and the mean) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in report["mean"] if n != "n"]
    paths = [out / "metrics.json", out / "metrics.csv", out / "metrics_summary.csv"]
    _write_text(paths[0], json.dumps(report, indent=2))
    _write_csv(paths[1], ["name", "group", *names], ([r["name"], r["group"], *(f"{r[n]:.6f}" for n in names)]
                                                    for r in report["per_image"]))
    summary = [*report["groups"].items(), ("mean", report["mean"])]
    _write_csv(paths[2], ["group", *names, "n", *report["folder"]],
               ([g, *(f"{v[n]:.6f}" for n in names), v["n"], *(f"{x:.6f}" if g == "mean" else "" for x in
                                                                report["folder"].values())] for g, v in summary))
    return paths


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def format_evaluation(report: EvaluationReport) -> str:
    """A text table: one row per group and the mean, one column per metric (arrows give the direction)."""
    proto = report["protocol"]["metrics"]
    names = [n for n in report["mean"] if n != "n"]
    heads = [f"{n}{'↓' if proto[n]['lower_better'] else '↑'}" for n in names]
    rows = [*report["groups"].items(), ("mean", report["mean"])]
    width = max(5, *(len(g) for g, _ in rows))
    lines = [f"{'group':<{width}} " + " ".join(f"{h:>12}" for h in heads) + f" {'n':>5}"]
    for g, v in rows:
        lines.append(f"{g:<{width}} " + " ".join(f"{v[n]:12.4f}" for n in names) + f" {v['n']:5d}")
    for name, value in report["folder"].items():
        lines.append(f"{name} (folder vs {report['protocol']['gt']}): {value:.4f}")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
