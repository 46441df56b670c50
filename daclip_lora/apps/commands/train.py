"""``daclip-lora train``: a task trained from a UIR-style options file (``--dry-run``: the plan only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_options_args, is_main_process, load_cli_options, save_resolved, start_run


def _trainer_for(opt):
    from ...training.tasks import get_task

    task = get_task(opt.task)
    return task.trainer_class()(opt), task.output


def _cmd_train(args: argparse.Namespace) -> int:
    from ...training.engine import Engine

    opt = load_cli_options(args, is_train=True)
    if args.dry_run:
        from ...training.dry_run import dry_run, format_dry_run

        print(format_dry_run(dry_run(opt)))
        return 0
    exp = Path(opt.path.experiments_root)
    log_file = start_run(exp, resume=bool(opt.path.resume_state), log_name="train")
    if is_main_process():
        for key in ("models", "training_state", "val_images"):
            Path(getattr(opt.path, key)).mkdir(parents=True, exist_ok=True)
        save_resolved(opt, exp)
    trainer, output = _trainer_for(opt)
    result = Engine(opt, trainer).fit()
    if not is_main_process():
        return 0
    print(f"trained {result.step} steps in {result.seconds:.0f} s; final loss {result.losses[-1]:.4f}")
    for step, metrics in sorted(result.validations.items())[-1:]:
        print(f"validation @ {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"outputs: {Path(opt.path.models) / output}")
    print(f"checkpoints: {opt.path.training_state}")
    print(f"log: {log_file}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train from a UIR-style options file (-opt X.yml)",
                       description="Train as the options file says (task: controller trains a LoRA on the "
                                   "DA-CLIP controller; task: restoration trains the degradation-aware SD LoRA). "
                                   "Outputs go to <root>/experiments/<name>/.")
    add_options_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's newest complete checkpoint (path.resume_state: auto); starts "
                        "from step 0 when there is none")
    p.add_argument("--dry-run", action="store_true",
                   help="train nothing, write nothing: print the datasets per degradation, the trainable and frozen "
                        "parameters per part, the steps and an estimate of one device's peak memory")
    short = p.add_argument_group("short flags (text-to-image LoRA style; same as --opt overrides)")
    short.add_argument("-d", dest="dataset", metavar="DIR", help="training folder (datasets.train.dataroot)")
    short.add_argument("-gp", dest="prompts", metavar="FILE", help="validation prompts file (sd.validation_prompts)")
    short.add_argument("-e", dest="steps", metavar="N", help="training steps (train.niter)")
    short.add_argument("-b", dest="batch", metavar="N", help="global batch size (datasets.train.batch_size)")
    short.add_argument("-u", dest="unet_lr", metavar="LR", help="UNet LoRA learning rate (train.lr_G)")
    short.add_argument("-t", dest="text_lr", metavar="LR", help="text-encoder LoRA learning rate (sd.text_encoder_lr)")
    p.set_defaults(func=_cmd_train)
