"""The embedded demo: the whole pipeline on CPU from data that ships inside installed packages.

Stages (each writes its inputs and outputs under ``--out`` so any stage can be re-run by hand with
``daclip-lora train/test -opt <out>/options/*.yml``):

1. a synthetic multi-degradation dataset from scikit-image's photographs (``make-dataset builtin``): train,
   held-out (val) and calibration splits, each from its own crops of the same photographs, and a ``test`` split
   cut only from photographs that neither the shipped bases nor any demo stage trained on
   (:data:`~daclip_lora.data.synthetic.HELD_OUT_IMAGES`);
2. the tiny *pretrained* DA-CLIP base that ships with the package (``daclip_tiny``; its vision tower was trained
   on the synthetic degradations, its text tower is random: :func:`daclip_lora.tiny.recipes.train_tiny_daclip`);
3. zero-shot degradation accuracy of that base on the held-out splits (before);
4. controller-LoRA training on the train split, then the same evaluation (after);
5. the tiny *pretrained* Stable Diffusion base that ships with the package (:mod:`daclip_lora.tiny.recipes`:
   a VAE trained to reconstruct and a UNet trained as a denoiser on scikit-image photographs);
6. degradation-aware SD LoRA training on it, conditioned on the adapted DA-CLIP, with cached latents; then the
   fusion head, fitted on training images and on the calibration split (images the controller never saw, so
   the head learns how far DA-CLIP's embeddings can be trusted on new images);
7. restoration of the held-out splits: PSNR/SSIM table (restored vs LQ), restored images, LQ|restored|GT
   grids and ``overview.png`` (one row per degradation).

The DA-CLIP base knows image statistics but not the degradation words (nothing here can teach it language), so
its zero-shot accuracy starts near chance and the rise shows what the controller LoRA learns; the SD base is
pretrained, so the restoration numbers are real.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

logger = logging.getLogger(__name__)

__all__ = ["run_demo", "train_tiny_restorer", "DEMO_PRESETS"]

#: LoRA on every convolution and linear layer of the tiny UNet: its attention runs only at the lowest
#: resolution, so attention-only LoRA cannot change fine detail
DEMO_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj",
                     "ff.net.2", "time_emb_proj", "conv_out", "conv"]

#: every DA-CLIP path into the UNet: tokens in the text context, the degradation embedding in the time
#: embedding, the degradation-modulated LoRA and the degradation-aware output norm (docs/restoration.md)
DEMO_CONDITIONING = {"num_tokens": 2, "time_embedding": True, "modulated_lora": True, "output_norm": True}

DEMO_PRESETS: Dict[str, Dict[str, Any]] = {
    "full": {"size": 96, "val_size": 8, "test_size": 8, "calib_size": 48, "patch": 64,
             "controller_steps": 300, "controller_batch": 32,
             # batch 16: the UNet is limited by the samples it sees (docs/status.md)
             "sd_steps": 250, "sd_batch": 16, "sd_lr": 3e-3,
             "sd_lora": {"rank": 8, "alpha": 8, "targets": DEMO_LORA_TARGETS},
             "sd_conditioning": DEMO_CONDITIONING,
             "sd_objective": {"objective": "one_step", "one_step_t": 50, "one_step_loss": "rmse", "fusion": True,
                              "fusion_images": 448},
             "sample_steps": 1, "sampling": {}},
    "quick": {"size": 4, "val_size": 2, "test_size": 2, "calib_size": 2, "patch": 32,
              "controller_steps": 6, "controller_batch": 8,
              "sd_steps": 4, "sd_batch": 8, "sd_lr": 3e-3,
              "sd_lora": {"rank": 4, "alpha": 4, "targets": DEMO_LORA_TARGETS},
              "sd_conditioning": DEMO_CONDITIONING,
              "sd_objective": {"objective": "one_step", "one_step_t": 50, "one_step_loss": "rmse", "fusion": True,
                               "fusion_images": 16},
              "sample_steps": 1, "sampling": {}},
}


def _write_yaml(path: Path, data: Dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"demo output folder {out} is not empty; pass --overwrite to replace it "
                                  f"(results of two runs are never mixed)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def demo_data(out: Path, preset: str = "full", seed: int = 0) -> Dict[str, Any]:
    """Stage 1: the synthetic dataset under ``out/data`` (returns its manifest)."""
    from ..data.synthetic import make_dataset

    p = DEMO_PRESETS[preset]
    return make_dataset(out / "data", source="builtin", size=p["size"], val_size=p["val_size"],
                        calib_size=p["calib_size"], test_size=p["test_size"], patch_size=p["patch"], seed=seed)


#: the demo's two held-out splits: new crops of the training photographs, and photographs nothing was trained on
EVAL_SPLITS = ("val", "test")


def _eval_datasets(data: Path) -> Dict[str, Any]:
    """``datasets`` of the demo's test options: each held-out split that exists under ``data``."""
    return {split: {"mode": "MD", "dataroot": str(data / split)} for split in EVAL_SPLITS if (data / split).is_dir()}


def restoration_options(out: Path, name: str, distortion: List[str], daclip: Dict[str, Any], preset: str = "full",
                        seed: int = 0, conditioning: Optional[Dict[str, Any]] = None,
                        lora: Optional[Dict[str, Any]] = None, sampling: Optional[Dict[str, Any]] = None,
                        steps: Optional[int] = None, objective: Optional[Dict[str, Any]] = None,
                        calib: bool = True) -> Tuple[Path, Path]:
    """Training and test options of a restoration run on the demo data and the shipped tiny SD base (with
    ``calib`` and a fusion head, the head is also fitted on ``out/data/calib`` when it exists)."""
    from ..tiny.locate import embedded_sd_base

    p = DEMO_PRESETS[preset]
    data = out / "data"
    steps = steps or p["sd_steps"]
    common = {"distortion": distortion, "task": "restoration", "daclip": daclip,
              "sd": {"base": str(embedded_sd_base()), "lora": {**p["sd_lora"], **(lora or {})},
                     "conditioning": {**p["sd_conditioning"], **(conditioning or {})},
                     **p["sd_objective"], **(objective or {})},
              "sampling": {"steps": p["sample_steps"], "scheduler": "ddim", **p["sampling"], **(sampling or {})}}
    train = _write_yaml(out / "options" / f"{name}_train.yml", {
        "name": name, **common,
        # every degradation has the same patches here, so the proportional draw (a permutation per epoch) is
        # already balanced; it keeps the shipped restorer reproducible from its recipe
        "datasets": {"train": {"mode": "MD", "dataroot": str(data / "train"), "batch_size": p["sd_batch"],
                               "patch_size": p["patch"], "sampling": "proportional"},
                     "val": {"mode": "MD", "dataroot": str(data / "val")},
                     # the fusion head is also fitted on these (see sd.fusion_images)
                     **({"calib": {"mode": "MD", "dataroot": str(data / "calib")}}
                        if calib and (data / "calib").is_dir() and common["sd"].get("fusion") else {})},
        "train": {"lr_G": p["sd_lr"], "niter": steps, "warmup_iter": min(20, steps // 10), "val_freq": steps,
                  "manual_seed": seed},
        "logger": {"print_freq": max(1, steps // 4), "save_checkpoint_freq": steps},
        "runtime": {"device": "cpu", "cache": True},
    })
    test = _write_yaml(out / "options" / f"{name}_test.yml", {
        "name": name, **common, "runtime": {"device": "cpu"}, "datasets": _eval_datasets(data),
    })
    return train, test


def write_overview(results: Path, distortion: List[str], path: Path, per_row: int = 2, split: str = "val",
                   zoom: int = 2) -> Path:
    """One labelled row per degradation: the first ``per_row`` LQ | restored | GT grids of ``split`` side by side,
    magnified ``zoom`` times (nearest neighbour), with the degradation's name, column headers and each
    image's PSNR against its GT."""
    from ..data.images import read_image, write_image

    rows = []
    for deg in distortion:
        grids = [read_image(g) for g in sorted((results / split / deg / "grids").glob("*.png"))[:per_row]]
        if grids:
            rows.append((deg, grids))
    if not rows:
        raise FileNotFoundError(f"no LQ | restored | GT grids under {results / split}: run the evaluation first")
    return write_image(path, _labelled_overview(rows, zoom))


def _labelled_overview(rows: List[Tuple[str, List[Any]]], zoom: int) -> Any:
    """The overview picture (uint8 array) of ``(degradation, [grid, ...])`` rows."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from .._utils.image_metrics import psnr

    side = rows[0][1][0].shape[0] * zoom  # one panel (LQ, restored or GT) is side x side
    font = ImageFont.load_default(size=max(10, side // 9))
    label_w, head_h, foot_h, gap = side + 8, side // 5, side // 6, 6
    n = max(len(g) for _, g in rows)
    width = label_w + n * (3 * side + gap)
    canvas = Image.new("RGB", (width, head_h + len(rows) * (side + foot_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for j in range(n):
        for k, name in enumerate(("LQ", "restored", "GT")):
            draw.text((label_w + j * (3 * side + gap) + k * side + side // 2, head_h // 2), name, fill="black",
                      font=font, anchor="mm")
    for i, (deg, grids) in enumerate(rows):
        top = head_h + i * (side + foot_h)
        draw.text((4, top + side // 2), deg, fill="black", font=font, anchor="lm")
        for j, grid in enumerate(grids):
            left = label_w + j * (3 * side + gap)
            big = np.repeat(np.repeat((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8), zoom, 0), zoom, 1)
            canvas.paste(Image.fromarray(big), (left, top))
            w = grid.shape[1] // 3
            lq, restored, gt = grid[:, :w], grid[:, w:2 * w], grid[:, 2 * w:3 * w]
            for k, image in enumerate((lq, restored)):
                draw.text((left + k * side + side // 2, top + side + foot_h // 2), f"{psnr(image, gt):.1f} dB",
                          fill="black", font=font, anchor="mm")
    return np.asarray(canvas)


def controller_options(out: Path, distortion: List[str], daclip: Dict[str, Any], preset: str = "full",
                       seed: int = 0) -> Tuple[Path, Path]:
    """Training and test options of the demo's controller LoRA run on ``out/data``."""
    p, data = DEMO_PRESETS[preset], out / "data"
    common = {"distortion": distortion, "daclip": daclip, "runtime": {"device": "cpu"}}
    train = _write_yaml(out / "options" / "controller_train.yml", {
        "name": "demo_controller", "task": "controller", **common,
        "datasets": {"train": {"mode": "CSV", "csv": str(data / "daclip_train.csv"),
                               "batch_size": p["controller_batch"]},
                     "val": {"mode": "MD", "dataroot": str(data / "val")}},
        "controller": {"lora": {"rank": 8, "alpha": 16}, "caption_weight": 0.1},
        "train": {"lr_G": 3e-3, "niter": p["controller_steps"], "warmup_iter": min(20, p["controller_steps"] // 4),
                  "val_freq": 0, "manual_seed": seed},
        "logger": {"print_freq": max(1, p["controller_steps"] // 4), "save_checkpoint_freq": p["controller_steps"]},
    })
    test = _write_yaml(out / "options" / "controller_test.yml", {
        "name": "demo_controller", "task": "controller", **common, "datasets": _eval_datasets(data),
    })
    return train, test


def _controller_summary(trainer, result, before: Dict[str, Any], after: Dict[str, Any], classes: int
                        ) -> Dict[str, Any]:
    return {"controller_trainable": trainer.report.trainable,
            "controller_trainable_percent": round(trainer.report.percent, 3),
            "controller_steps": result.step,
            "controller_final_loss": result.losses[-1],
            "controller_accuracy_before": before["overall"],
            "controller_accuracy_after": after["overall"],
            "controller_accuracy_per_class_after": after["per_class"],
            "chance": 1.0 / classes}


def _restoration_summary(report: Dict[str, Any]) -> Dict[str, Any]:
    mean, per = report["mean"], {k: v for k, v in report.items() if k != "mean"}
    return {"psnr_lq": mean["lq_psnr"], "psnr_restored": mean["psnr"], "ssim_lq": mean["lq_ssim"],
            "ssim_restored": mean["ssim"], "degradations_improved": sum(v["psnr"] > v["lq_psnr"] for v in per.values()),
            "restoration_per_degradation": per}


def _unet_alone_summary(test, folder: Path, distortion: List[str]) -> Dict[str, Dict[str, Any]]:
    """:func:`~daclip_lora.training.tasks.restoration_ablation.unet_alone_report` on each held-out split, as summary
    keys."""
    from ..restoration.pipeline import RestorationPipeline
    from ..training.tasks.restoration import restoration_dataset
    from ..training.tasks.restoration_ablation import unet_alone_report

    pipe = RestorationPipeline.from_pretrained(folder, device=test.runtime.device)
    out = {}
    for split, block in test.datasets.items():
        r = unet_alone_report(pipe, restoration_dataset(block, distortion, train=False,
                                                        clip_size=pipe.daclip.image_size))
        out[split] = {"psnr_unet": r["unet"], "psnr_unet_wrong_embedding": r["unet_wrong_embedding"],
                      "unet_degradations_improved": r["unet_degradations_improved"],
                      "unet_per_degradation": r["per_degradation"]}
    return out


def _new_photographs(manifest: Dict[str, Any], controller: Dict[str, Any], restoration: Dict[str, Any]
                     ) -> Dict[str, Any]:
    """The ``test`` split's figures (photographs no base and no demo stage trained on), popped out of the stage
    results into one summary block; the top-level keys stay those of the ``val`` split (new crops)."""
    block = {"images": manifest.get("held_out_images", [])}
    for part in (controller, restoration):
        block.update(part.pop("test", {}))
    return block


class _Stages:
    """The demo's numbered stages: logs each one and its start time (``stage_seconds`` in the summary)."""

    def __init__(self, total: int = 9):
        self.total, self.marks = total, []

    def __call__(self, name: str, message: str, *args: Any) -> None:
        self.marks.append((name, time.perf_counter()))
        logger.info(f"[%d/{self.total}] " + message, len(self.marks), *args)

    def seconds(self, end: float) -> Dict[str, float]:
        stops = [t for _, t in self.marks[1:]] + [end]
        return {name: round(stop - t, 1) for (name, t), stop in zip(self.marks, stops)}


def _controller_stages(out: Path, stage: _Stages, distortion: List[str], daclip: Dict[str, Any], preset: str,
                       seed: int) -> Dict[str, Any]:
    """Zero-shot accuracy of the base, controller LoRA training, the same accuracy after."""
    from ..training.engine import Engine
    from ..training.options import load_options
    from ..training.tasks.controller import ControllerTrainer, evaluate_controller

    controller_opt, test_opt = controller_options(out, distortion, daclip, preset, seed)
    stage("controller_before", "degradation accuracy of the base on the held-out splits")
    before = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"))
    stage("controller", "controller LoRA training (%d steps), then the same evaluation",
          DEMO_PRESETS[preset]["controller_steps"])
    opt = load_options(controller_opt, is_train=True, root=out / "runs")
    trainer = ControllerTrainer(opt)
    result = Engine(opt, trainer).fit()
    adapter = Path(opt.path.models) / "controller_lora"
    after = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"), adapter=str(adapter))
    summary = {"controller_lora": str(adapter),
               **_controller_summary(trainer, result, before["val"], after["val"], len(distortion))}
    if "test" in after:
        summary["test"] = {"controller_accuracy_before": before["test"]["overall"],
                           "controller_accuracy_after": after["test"]["overall"],
                           "controller_accuracy_per_class_after": after["test"]["per_class"]}
    return summary


def _restoration_stages(out: Path, stage: _Stages, distortion: List[str], daclip: Dict[str, Any], preset: str,
                        seed: int) -> Dict[str, Any]:
    """Restoration training (LoRA, then the fusion head) and evaluation of the held-out splits."""
    from ..tiny.locate import embedded_sd_base
    from ..training.engine import Engine
    from ..training.options import load_options
    from ..training.tasks.restoration import RestorationTrainer
    from ..training.tasks.restoration_eval import evaluate_restoration

    stage("sd_base", "the shipped tiny pretrained Stable Diffusion base")
    sd_base = embedded_sd_base()
    stage("restoration_training", "degradation-aware SD LoRA training (%d steps, cached latents), then the fusion "
          "head", DEMO_PRESETS[preset]["sd_steps"])
    sd_train, sd_test = restoration_options(out, "demo_restoration", distortion, daclip, preset, seed)
    opt = load_options(sd_train, is_train=True, root=out / "runs")
    sd_result = Engine(opt, RestorationTrainer(opt)).fit()
    sd_lora = Path(opt.path.models) / "restoration"
    stage("restoration_eval", "restoration of the held-out splits")
    test = load_options(sd_test, is_train=False, root=out / "runs")
    report = evaluate_restoration(test, folder=str(sd_lora))
    results = Path(test.path.results_root)
    overview = write_overview(results, distortion, out / "overview.png")
    stage("unet_alone", "the UNet without the fusion head, with each image's DA-CLIP embeddings and another "
          "degradation's")
    unet = _unet_alone_summary(test, sd_lora, distortion)
    summary = {"sd_base": str(sd_base), "sd_lora": str(sd_lora), "sd_steps": sd_result.step,
               "sd_final_loss": sd_result.losses[-1], **_restoration_summary(report["val"]), **unet["val"],
               "sampling": dict(vars(test.sampling)), "results": str(results), "overview": str(overview)}
    if "test" in report:
        summary["test"] = {**_restoration_summary(report["test"]), **unet["test"], "overview": str(
            write_overview(results, distortion, out / "overview_new_photographs.png", split="test"))}
    stage("quality", "image-quality metrics of the restored held-out photographs (pyiqa where installed)")
    summary["quality"] = quality_summary(results / ("test" if "test" in report else "val"),
                                         out / "data" / ("test" if "test" in report else "val"))
    return summary


def quality_summary(restored: Path, data: Path) -> Dict[str, Any]:
    """``daclip-lora evaluate`` on the demo's restored split with :data:`~daclip_lora.metrics.protocol.DEMO_METRICS`,
    one metric at a time: what can be computed here is reported, what cannot (no pyiqa, no weight file, images
    below a metric's minimum size) is named in ``skipped`` with its one-line reason. Nothing is downloaded (the
    demo's promise): only weights already in the cache are used."""
    from ..metrics import DEMO_METRICS, evaluate_folders, no_downloads, write_evaluation

    mean: Dict[str, Any] = {}
    skipped: Dict[str, str] = {}
    implementations: Dict[str, str] = {}
    for metric in DEMO_METRICS:
        try:
            with no_downloads():
                report = evaluate_folders(restored, data, metrics=[metric], skip_missing=True)
        except ValueError as exc:  # e.g. NIQE needs 96 px blocks
            skipped[metric] = str(exc)
            continue
        skipped.update(report["skipped"])
        if metric in report["mean"]:
            mean[metric] = report["mean"][metric]
            implementations[metric] = report["protocol"]["metrics"][metric]["implementation"]
            write_evaluation(report, restored / "quality" / metric)
    return {"split": data.name, "mean": mean, "n": report["mean"]["n"] if mean else 0, "skipped": sorted(skipped),
            "skipped_why": skipped, "implementations": implementations, "reports": str(restored / "quality")}


def run_demo(out: Path, preset: str = "full", seed: int = 0, overwrite: bool = False) -> Dict[str, Any]:
    """Run the embedded demo into ``out`` and return (and write) ``out/summary.json``."""
    from ..tiny.locate import embedded_daclip_base

    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; use one of {', '.join(DEMO_PRESETS)}")
    out = Path(out).expanduser().resolve()
    _prepare_out(out, overwrite)
    start = time.perf_counter()
    stage = _Stages()
    stage("dataset", "synthetic dataset from scikit-image photographs")
    manifest = demo_data(out, preset, seed)
    distortion = manifest["distortions"]
    stage("daclip_base", "the shipped tiny pretrained DA-CLIP base")
    base_path = embedded_daclip_base()
    daclip = {"model": "daclip_tiny", "pretrained": str(base_path)}
    controller = _controller_stages(out, stage, distortion, daclip, preset, seed)
    restoration = _restoration_stages(out, stage, distortion, {**daclip, "adapter": controller["controller_lora"]},
                                      preset, seed)
    end = time.perf_counter()
    new_photographs = _new_photographs(manifest, controller, restoration)
    summary = {"preset": preset, "seed": seed, "dataset": str(out / "data"), "daclip_base": str(base_path),
               **controller, **restoration, "new_photographs": new_photographs,
               "seconds": round(end - start, 1), "stage_seconds": stage.seconds(end)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_tiny_restorer(out: Union[str, Path], seed: int = 0, threads: Optional[int] = 2) -> Dict[str, Any]:
    """Train the tiny restorer the web app starts with: exactly the embedded demo (``daclip-lora demo``, preset
    ``full``, ``seed``) on the shipped SD and DA-CLIP bases, then keep its controller LoRA and restoration LoRA
    in ``out`` with ``recipe.json`` (the demo's numbers). The bases are not copied: ``restoration.json`` points at
    the shipped ones by relative paths.
    """
    import platform
    import tempfile

    import torch

    from .._utils.threads import torch_threads
    from ..tiny.locate import EMBEDDED_DACLIP, EMBEDDED_SD

    out = Path(out)
    with torch_threads(threads):
        with tempfile.TemporaryDirectory(prefix="daclip_lora_restorer_") as tmp:
            summary = run_demo(Path(tmp) / "demo", preset="full", seed=seed)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            shutil.copytree(summary["controller_lora"], out / "controller_lora")
            shutil.copytree(summary["sd_lora"], out / "restoration")
        config_path = out / "restoration" / "restoration.json"
        config = json.loads(config_path.read_text())
        # where the parts live inside the package, relative to restoration.json's folder
        config.update(base=f"../../{EMBEDDED_SD.name}",
                      daclip_pretrained=f"../../{EMBEDDED_DACLIP.name}/daclip_tiny.safetensors",
                      daclip_adapter="../controller_lora")
        config_path.write_text(json.dumps(config, indent=2))
        keep = ("controller_accuracy_before", "controller_accuracy_after", "psnr_lq", "psnr_restored", "ssim_lq",
                "ssim_restored", "degradations_improved", "restoration_per_degradation", "psnr_unet",
                "psnr_unet_wrong_embedding", "unet_degradations_improved", "sampling", "seconds")
        new_photographs = {k: v for k, v in summary["new_photographs"].items() if k != "overview"}
        record = {"recipe": "daclip_lora.apps.demo.train_tiny_restorer",
                  "command": f"daclip-lora make-tiny-base {out.name} --restorer --seed {seed}", "seed": seed,
                  "what": "the embedded demo (preset full) on the shipped tiny SD and DA-CLIP bases",
                  "threads": torch.get_num_threads(),
                  "demo": {**{k: summary[k] for k in keep}, "new_photographs": new_photographs},
                  "versions": {"torch": torch.__version__, "python": platform.python_version()}}
        (out / "recipe.json").write_text(json.dumps(record, indent=2))
        return record
