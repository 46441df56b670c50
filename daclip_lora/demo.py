"""The embedded demo: the whole pipeline on CPU from data that ships inside installed packages.

Stages (each writes its inputs and outputs under ``--out`` so any stage can be re-run by hand with
``daclip-lora train/test -opt <out>/options/*.yml``):

1. a synthetic multi-degradation dataset from scikit-image's photographs (``make-dataset builtin``);
2. a tiny DA-CLIP with deterministic random weights (``daclip_tiny``), saved as a checkpoint;
3. zero-shot degradation accuracy of that base on the held-out split (before);
4. controller-LoRA training on the train split, then the same evaluation (after);
5. a tiny Stable Diffusion folder with deterministic random weights and a real CLIP tokenizer;
6. degradation-aware SD LoRA training conditioned on the adapted DA-CLIP, with cached latents;
7. restoration of the held-out split: PSNR/SSIM table, restored images and LQ|restored|GT grids.

Random tiny bases know nothing about images or language: the demo shows that the machinery learns
(accuracy rises well above the 1-in-10 chance level) and that every stage runs and writes what a real
run writes. A random VAE cannot reconstruct images, so the restoration numbers say nothing about quality.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict

import torch
import yaml

logger = logging.getLogger(__name__)

__all__ = ["run_demo", "DEMO_PRESETS"]

DEMO_PRESETS: Dict[str, Dict[str, int]] = {
    # clean train patches, clean val patches, patch size, controller steps, controller batch
    "full": {"size": 24, "val_size": 8, "patch": 64, "controller_steps": 400, "controller_batch": 32,
             "sd_steps": 200, "sd_batch": 16, "sample_steps": 20},
    "quick": {"size": 4, "val_size": 2, "patch": 32, "controller_steps": 6, "controller_batch": 8,
              "sd_steps": 4, "sd_batch": 8, "sample_steps": 2},
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


def run_demo(out: Path, preset: str = "full", seed: int = 0, overwrite: bool = False) -> Dict[str, Any]:
    """Run the embedded demo into ``out`` and return (and write) ``out/summary.json``."""
    from .checkpoint import save_model
    from .data.synthetic import make_dataset
    from .engine import Engine
    from .factory import create_model
    from .options import load_options
    from .tiny_sd import build_tiny_sd
    from .trainers.controller import ControllerTrainer, evaluate_controller
    from .trainers.restoration import RestorationTrainer, evaluate_restoration

    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; use one of {', '.join(DEMO_PRESETS)}")
    p = DEMO_PRESETS[preset]
    out = Path(out).expanduser().resolve()
    _prepare_out(out, overwrite)
    start = time.perf_counter()

    logger.info("[1/7] synthetic dataset from scikit-image photographs")
    data = out / "data"
    manifest = make_dataset(data, source="builtin", size=p["size"], val_size=p["val_size"],
                            patch_size=p["patch"], seed=seed)
    distortion = manifest["distortions"]

    logger.info("[2/7] tiny DA-CLIP with deterministic random weights")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        base = create_model("daclip_tiny")
    base_path = out / "models" / "daclip_tiny_base.safetensors"
    save_model(base, base_path, model_name="daclip_tiny")

    common = {"distortion": distortion, "daclip": {"model": "daclip_tiny", "pretrained": str(base_path)},
              "runtime": {"device": "cpu"}}
    controller_opt = _write_yaml(out / "options" / "controller_train.yml", {
        "name": "demo_controller", "task": "controller", **common,
        "datasets": {"train": {"mode": "CSV", "csv": str(data / "daclip_train.csv"),
                               "batch_size": p["controller_batch"]},
                     "val": {"mode": "MD", "dataroot": str(data / "val")}},
        "controller": {"lora": {"rank": 8, "alpha": 16}, "caption_weight": 0.1},
        "train": {"lr_G": 3e-3, "niter": p["controller_steps"], "warmup_iter": min(20, p["controller_steps"] // 4),
                  "val_freq": 0, "manual_seed": seed},
        "logger": {"print_freq": max(1, p["controller_steps"] // 4), "save_checkpoint_freq": p["controller_steps"]},
    })
    test_opt = _write_yaml(out / "options" / "controller_test.yml", {
        "name": "demo_controller", "task": "controller", **common,
        "datasets": {"val": {"mode": "MD", "dataroot": str(data / "val")}},
    })

    logger.info("[3/7] degradation accuracy of the base on the held-out split")
    before = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"))["val"]

    logger.info("[4/7] controller LoRA training (%d steps), then the same evaluation", p["controller_steps"])
    opt = load_options(controller_opt, is_train=True, root=out / "runs")
    trainer = ControllerTrainer(opt)
    result = Engine(opt, trainer).fit()
    adapter = Path(opt.path.models) / "controller_lora"
    after = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"), adapter=str(adapter))["val"]

    logger.info("[5/7] tiny Stable Diffusion folder with deterministic random weights")
    sd_base = build_tiny_sd(out / "models" / "tiny_sd", seed=seed)

    logger.info("[6/7] degradation-aware SD LoRA training (%d steps, cached latents)", p["sd_steps"])
    sd_common = {**common, "task": "restoration",
                 "daclip": {**common["daclip"], "adapter": str(adapter)},
                 "sd": {"base": str(sd_base), "lora": {"rank": 4, "alpha": 4}, "conditioning": {"num_tokens": 2}},
                 "sampling": {"steps": p["sample_steps"], "scheduler": "ddim"}}
    sd_train = _write_yaml(out / "options" / "restoration_train.yml", {
        "name": "demo_restoration", **sd_common,
        "datasets": {"train": {"mode": "MD", "dataroot": str(data / "train"), "batch_size": p["sd_batch"],
                               "patch_size": p["patch"]},
                     "val": {"mode": "MD", "dataroot": str(data / "val")}},
        "train": {"lr_G": 1e-3, "niter": p["sd_steps"], "warmup_iter": 0, "val_freq": p["sd_steps"],
                  "manual_seed": seed},
        "logger": {"print_freq": max(1, p["sd_steps"] // 4), "save_checkpoint_freq": p["sd_steps"]},
        "runtime": {**common["runtime"], "cache": True},
    })
    sd_test = _write_yaml(out / "options" / "restoration_test.yml", {
        "name": "demo_restoration", **sd_common,
        "datasets": {"val": {"mode": "MD", "dataroot": str(data / "val")}},
    })
    opt = load_options(sd_train, is_train=True, root=out / "runs")
    sd_result = Engine(opt, RestorationTrainer(opt)).fit()
    sd_lora = Path(opt.path.models) / "restoration"

    logger.info("[7/7] restoration of the held-out split")
    test = load_options(sd_test, is_train=False, root=out / "runs")
    report = evaluate_restoration(test, folder=str(sd_lora))["val"]
    mean = report["mean"]

    summary = {
        "preset": preset,
        "seed": seed,
        "dataset": str(data),
        "daclip_base": str(base_path),
        "controller_lora": str(adapter),
        "controller_trainable": trainer.report.trainable,
        "controller_trainable_percent": round(trainer.report.percent, 3),
        "controller_steps": result.step,
        "controller_final_loss": result.losses[-1],
        "controller_accuracy_before": before["overall"],
        "controller_accuracy_after": after["overall"],
        "controller_accuracy_per_class_after": after["per_class"],
        "chance": 1.0 / len(distortion),
        "sd_base": str(sd_base),
        "sd_lora": str(sd_lora),
        "sd_steps": sd_result.step,
        "sd_final_loss": sd_result.losses[-1],
        "psnr_lq": mean["lq_psnr"],
        "psnr_restored": mean["psnr"],
        "ssim_lq": mean["lq_ssim"],
        "ssim_restored": mean["ssim"],
        "restoration_per_degradation": {k: v for k, v in report.items() if k != "mean"},
        "results": str(test.path.results_root),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
