"""``daclip-lora test`` for ``task: restoration``: every test split restored with the sampling options, PSNR/SSIM
(and ``sampling.metrics``) per degradation, the restored images and their LQ | restored | GT grids, and the
``metrics.json``/``metrics.csv`` report."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..._utils.image_metrics import image_metrics
from ...data.images import write_image
from ...restoration.pipeline import RestorationPipeline
from .restoration import restoration_dataset, restore_sample

__all__ = ["evaluate_restoration", "format_restoration_table"]


def evaluate_restoration(opt, folder: Optional[str] = None, merge_lora: Optional[bool] = None,
                         max_images: Optional[int] = None) -> Dict[str, Any]:
    """``daclip-lora test`` for ``task: restoration``: metrics per dataset and degradation, images, grids."""
    s = opt.sampling
    folder = folder or (Path(opt.path.root) / "experiments" / opt.name / "models" / "restoration")
    if s.metrics:  # names and weights checked before anything is restored
        from ...metrics import METRICS, create_metrics, resolve_metrics

        create_metrics([METRICS[m.name] for m in resolve_metrics(s.metrics, has_gt=True)])
    pipe = RestorationPipeline.from_pretrained(folder, base=opt.sd.base, daclip_pretrained=opt.daclip.pretrained,
                                               merge_lora=s.merge_lora if merge_lora is None else merge_lora,
                                               device=opt.runtime.device,
                                               precision=s.precision, lora_scale=s.lora_scale,
                                               daclip_adapter=opt.daclip.adapter)
    results_root = Path(opt.path.results_root)
    report: Dict[str, Any] = {}
    for key, block in opt.datasets.items():
        dataset = restoration_dataset(block, opt.distortion, train=False, clip_size=pipe.daclip.image_size)
        n = len(dataset) if max_images is None else min(max_images, len(dataset))
        report[key] = _summarise(_evaluate_dataset(pipe, dataset, n, results_root / key, s))
        if s.metrics:
            report[key]["quality"] = _quality(results_root / key, block, s)
    _write_report(results_root, report)
    return report


def _quality(restored: Path, block, s) -> Dict[str, Any]:
    """``sampling.metrics`` of the restored images of one dataset, as ``daclip-lora evaluate`` computes them
    (reports in ``<restored>/quality/``)."""
    from ...metrics import evaluate_folders, write_evaluation

    report = evaluate_folders(restored, block.dataroot_GT or block.dataroot, metrics=s.metrics,
                              crop_border=s.crop_border)
    write_evaluation(report, restored / "quality")
    return {"mean": report["mean"], "groups": report["groups"], "folder": report["folder"],
            "protocol": report["protocol"]["metrics"]}


def _evaluate_dataset(pipe: RestorationPipeline, dataset, n: int, out: Path, s) -> Dict[str, List[Dict[str, float]]]:
    """Restore the first ``n`` samples, writing each image and its LQ | restored | GT grid; metrics per image,
    grouped by degradation."""
    per: Dict[str, List[Dict[str, float]]] = {}
    for i in range(n):
        sample = dataset[i]
        lq, r, gt = restore_sample(pipe, sample, s)
        deg = sample["degradation"] or "all"
        name = Path(sample["LQ_path"]).stem
        write_image(out / deg / f"{name}.png", r)
        write_image(out / deg / "grids" / f"{name}.png", np.concatenate([lq, r, gt], axis=1))
        restored_m = image_metrics(r, gt, s.crop_border)
        lq_m = image_metrics(lq, gt, s.crop_border)
        per.setdefault(deg, []).append({**restored_m, **{f"lq_{k}": v for k, v in lq_m.items()}})
    return per


def _summarise(per: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Mean metrics per degradation and over all images (``mean``), with their counts ``n``."""
    table = {deg: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} | {"n": len(ms)} for deg, ms in per.items()}
    everything = [m for ms in per.values() for m in ms]
    table["mean"] = {k: float(np.mean([m[k] for m in everything])) for k in everything[0]} | {"n": len(everything)}
    return table


def _write_report(results_root: Path, report: Dict[str, Any]) -> None:
    rows = [[key, deg, *(f"{v[k]:.4f}" for k in _COLUMNS), v["n"]] for key, table in report.items()
            for deg, v in table.items() if deg != "quality"]
    results_root.mkdir(parents=True, exist_ok=True)
    (results_root / "metrics.json").write_text(json.dumps(report, indent=2))
    with open(results_root / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "degradation", *_COLUMNS, "n"])
        writer.writerows(rows)


_COLUMNS = ("lq_psnr", "psnr", "lq_ssim", "ssim", "lq_psnr_y", "psnr_y", "lq_ssim_y", "ssim_y")


def format_restoration_table(report: Dict[str, Any]) -> str:
    lines = []
    for key, table in report.items():
        width = max(12, *(len(d) for d in table))
        lines.append(f"[{key}] {'degradation':<{width}} {'PSNR LQ':>8} {'PSNR out':>8} {'SSIM LQ':>8} {'SSIM out':>8}"
                     f" {'n':>4}")
        for deg, v in table.items():
            if deg == "quality":
                lines.append(f"{'':{len(key) + 2}} quality: " + ", ".join(
                    f"{m} {x:.4f}" for m, x in {**v["mean"], **v["folder"]}.items() if m != "n"))
                continue
            lines.append(f"{'':{len(key) + 2}} {deg:<{width}} {v['lq_psnr']:8.2f} {v['psnr']:8.2f} "
                         f"{v['lq_ssim']:8.4f} {v['ssim']:8.4f} {v['n']:4d}")
    return "\n".join(lines)
