"""The embedded demo: the whole pipeline on CPU from data that ships inside installed packages.

Stages (each writes its inputs and outputs under ``--out`` so any stage can be re-run by hand with
``daclip-lora train/test -opt <out>/options/*.yml``):

1. a synthetic multi-degradation dataset from scikit-image's photographs (``make-dataset builtin``);
2. a tiny DA-CLIP with deterministic random weights (``daclip_tiny``), saved as a checkpoint;
3. zero-shot degradation accuracy of that base on the held-out split (before);
4. controller-LoRA training on the train split, then the same evaluation (after).

Random tiny bases know nothing about images or language: the demo shows that the machinery learns
(accuracy rises well above the 1-in-10 chance level), not what a real DA-CLIP achieves.
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
    "full": {"size": 24, "val_size": 8, "patch": 64, "controller_steps": 400, "controller_batch": 32},
    "quick": {"size": 4, "val_size": 2, "patch": 32, "controller_steps": 6, "controller_batch": 8},
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
    from .trainers.controller import ControllerTrainer, evaluate_controller

    if preset not in DEMO_PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; use one of {', '.join(DEMO_PRESETS)}")
    p = DEMO_PRESETS[preset]
    out = Path(out).expanduser().resolve()
    _prepare_out(out, overwrite)
    start = time.perf_counter()

    logger.info("[1/4] synthetic dataset from scikit-image photographs")
    data = out / "data"
    manifest = make_dataset(data, source="builtin", size=p["size"], val_size=p["val_size"],
                            patch_size=p["patch"], seed=seed)
    distortion = manifest["distortions"]

    logger.info("[2/4] tiny DA-CLIP with deterministic random weights")
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

    logger.info("[3/4] degradation accuracy of the base on the held-out split")
    before = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"))["val"]

    logger.info("[4/4] controller LoRA training (%d steps), then the same evaluation", p["controller_steps"])
    opt = load_options(controller_opt, is_train=True, root=out / "runs")
    trainer = ControllerTrainer(opt)
    result = Engine(opt, trainer).fit()
    adapter = Path(opt.path.models) / "controller_lora"
    after = evaluate_controller(load_options(test_opt, is_train=False, root=out / "runs"), adapter=str(adapter))["val"]

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
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
