"""Evaluation metrics: zero-shot degradation accuracy (DA-CLIP's protocol), PSNR and SSIM."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._utils.image_metrics import image_metrics, psnr, ssim

logger = logging.getLogger(__name__)

__all__ = ["degradation_accuracy", "DegradationReport", "write_degradation_report", "psnr", "ssim", "image_metrics"]


class DegradationReport(dict):
    """``{"overall": float, "per_class": {name: acc}, "counts": {...}, "confusion": [[...]], "classes": [...]}``."""

    def table(self) -> str:
        width = max(len("overall"), *(len(c) for c in self["classes"]))
        lines = [f"{'degradation':<{width}}  accuracy  n"]
        for c in self["classes"]:
            lines.append(f"{c:<{width}}  {self['per_class'][c]:8.3f}  {self['counts'][c]}")
        lines.append(f"{'overall':<{width}}  {self['overall']:8.3f}  {sum(self['counts'].values())}")
        return "\n".join(lines)


@torch.no_grad()
def degradation_accuracy(model, tokenizer, dataset: Dataset, classes: Sequence[str], batch_size: int = 32,
                         device: Optional[torch.device] = None) -> DegradationReport:
    """Zero-shot degradation classification exactly as DA-CLIP evaluates it.

    The controller's degradation features of each image are compared with the text features of the bare
    degradation words; the prediction is the argmax of the cosine similarity.

    Args:
        model: a :class:`~daclip_lora.DaCLIP` (with or without a controller LoRA).
        tokenizer: its tokenizer.
        dataset: yields ``{"image_clip": (3, 224, 224), "degradation": name}``.
        classes: the degradation words (the label set).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    text = model.encode_text(tokenizer(list(classes)).to(device), normalize=True)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        unknown = sorted(set(batch["degradation"]) - set(index))
        if unknown:
            raise ValueError(f"evaluation images carry degradations outside the label set {list(classes)}: {unknown}")
        images = batch["image_clip"].to(device=device, dtype=text.dtype)
        _, degra = model.encode_image(images, control=True, normalize=True)
        pred = (degra @ text.T).argmax(dim=-1).cpu().numpy()
        for t, p in zip(batch["degradation"], pred):
            confusion[index[t], p] += 1
    model.train(was_training)
    counts = confusion.sum(axis=1)
    per_class = {c: float(confusion[i, i] / counts[i]) if counts[i] else float("nan") for i, c in enumerate(classes)}
    overall = float(np.trace(confusion) / max(1, confusion.sum()))
    return DegradationReport(overall=overall, per_class=per_class, classes=list(classes),
                             counts={c: int(n) for c, n in zip(classes, counts)}, confusion=confusion.tolist())


def write_degradation_report(report: DegradationReport, out_dir: Path, prefix: str = "degradation") -> List[Path]:
    """Write ``<prefix>_accuracy.json``, ``.csv`` and a confusion-matrix PNG into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = (out_dir / f"{prefix}_accuracy.json", out_dir / f"{prefix}_accuracy.csv",
                                     out_dir / f"{prefix}_confusion.png")
    json_path.write_text(json.dumps(report, indent=2))
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["degradation", "accuracy", "n"])
        for c in report["classes"]:
            w.writerow([c, f"{report['per_class'][c]:.4f}", report["counts"][c]])
        w.writerow(["overall", f"{report['overall']:.4f}", sum(report["counts"].values())])
    _confusion_png(np.asarray(report["confusion"]), report["classes"], png_path)
    return [json_path, csv_path, png_path]


def _confusion_png(confusion: np.ndarray, classes: Sequence[str], path: Path, cell: int = 28) -> None:
    """A row-normalised confusion matrix drawn with Pillow (rows: true, columns: predicted)."""
    from PIL import Image, ImageDraw

    n = len(classes)
    label_w = 8 * max(len(c) for c in classes) + 10
    img = Image.new("RGB", (label_w + n * cell + 10, label_w + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    rows = confusion / np.maximum(1, confusion.sum(axis=1, keepdims=True))
    for i in range(n):
        draw.text((4, label_w + i * cell + cell // 3), classes[i], fill="black")
        for j in range(n):
            v = rows[i, j]
            shade = int(255 * (1 - v))
            x0, y0 = label_w + j * cell, label_w + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="gray")
            draw.text((x0 + 4, y0 + cell // 3), f"{int(round(100 * v))}", fill="black" if v < 0.6 else "white")
    col_labels = Image.new("RGB", (label_w, n * cell), "white")
    cd = ImageDraw.Draw(col_labels)
    for j in range(n):
        cd.text((4, j * cell + cell // 3), classes[j], fill="black")
    img.paste(col_labels.rotate(90, expand=True), (label_w, 0))
    img.save(path)
