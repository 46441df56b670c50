"""``daclip-lora test``: a task evaluated from a UIR-style options file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import add_options_args, load_cli_options, save_resolved, start_run, weights_folder


def _cmd_test(args: argparse.Namespace) -> int:
    from ...training.tasks import TASKS, get_task

    opt = load_cli_options(args, is_train=False)
    if args.adapter is not None:  # the controller LoRA DA-CLIP runs with, as daclip.adapter would set it
        if "adapter" not in getattr(get_task(opt.task).blocks.get("daclip"), "__dataclass_fields__", {}):
            raise ValueError(f"--adapter: task {opt.task} reads no controller LoRA (daclip.adapter); drop --adapter")
        opt.daclip.adapter = str(args.adapter)
    results = Path(opt.path.results_root)
    evaluate = get_task(opt.task).evaluator()
    if evaluate is None:
        testable = [name for name, spec in TASKS.items() if spec.evaluate]
        raise ValueError(f"task {opt.task!r} is not available in this version; use {' or '.join(map(repr, testable))}")
    log_file = start_run(results, resume=False, log_name="test")
    save_resolved(opt, results)
    if opt.task == "controller":
        for key, report in evaluate(opt, adapter=args.adapter).items():
            print(f"[{key}] zero-shot degradation accuracy\n{report.table()}\n")
        print(f"results: {results} (JSON, CSV, confusion PNG)\nlog: {log_file}")
        return 0
    report = evaluate(opt, folder=weights_folder(args) if args.weights else None)
    if opt.task != "restoration":  # a registered task: its report as it returns it
        print(json.dumps(report, indent=2, default=str))
        print(f"results: {results}\nlog: {log_file}")
        return 0
    from ...training.tasks.restoration_eval import format_restoration_table

    print(format_restoration_table(report))
    print(f"results: {results} (metrics.json, metrics.csv, restored images and LQ|restored|GT grids)\nlog: {log_file}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("test", help="evaluate from a UIR-style options file (-opt X.yml)",
                       description="Evaluate as the options file says (task: controller: zero-shot degradation "
                                   "accuracy; task: restoration: restored images, PSNR/SSIM per degradation). "
                                   "Results go to <root>/results/<name>/.")
    add_options_args(p)
    p.add_argument("--adapter", type=Path, default=None, help="controller LoRA folder DA-CLIP runs with (controller and restoration tasks; "
                        "default: daclip.adapter, else the one the restoration folder records)")
    p.add_argument("--weights", type=Path, default=None,
                   help="restoration folder (default: <root>/experiments/<name>/models/restoration)")
    p.set_defaults(func=_cmd_test)
