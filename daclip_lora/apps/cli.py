"""``daclip-lora`` command line. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .._utils.compat import DependencyError, MissingExtraError
from .._utils.io import CheckpointWriteError

logger = logging.getLogger("daclip_lora.apps.cli")

EXIT_USER_ERROR = 2

# Errors that mean "the user gave us something wrong": shown as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, CheckpointWriteError, DependencyError)

# Commands that train or restore: the installed dependency versions are checked before they start.
CHECKED_COMMANDS = {"train", "test", "demo", "restore", "degradation", "evaluate", "app", "make-tiny-base", "export"}


def _cmd_list_models(args: argparse.Namespace) -> int:
    from ..clip.factory import list_models
    from ..clip.registry import list_models as registered

    for name in (list_models() if args.all else registered()):
        print(name)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    """Print the versions that matter for a bug report, and any unsupported one (exit 2 then)."""
    import platform

    from .._utils.version import __version__
    from .._utils.compat import SUPPORTED, dependency_problems, installed_versions

    print(f"daclip_lora {__version__}, Python {platform.python_version()} on {platform.platform()}")
    for name, version in installed_versions().items():
        print(f"  {name:<16} {version or 'not installed':<16} supported: {SUPPORTED[name].specifier()}")
    problems = dependency_problems()
    for problem in problems:
        print(f"unsupported: {problem}", file=sys.stderr)
    return EXIT_USER_ERROR if problems else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..clip.checkpoint import convert_checkpoint, load_state_dict
    from ..clip.factory import match_model_names

    if args.adapter:
        return _convert_with_adapter(args)
    model_name = args.model
    if model_name is None:
        matches = match_model_names(load_state_dict(args.input))
        model_name = matches[0] if len(matches) == 1 else None
        logger.info("architecture matches: %s", ", ".join(matches) or "no registered model")
    meta = convert_checkpoint(args.input, args.output, model_name=model_name)
    print(f"wrote {args.output} ({meta['kind']}, model_name={meta.get('model_name', '?')})")
    return 0


def _convert_with_adapter(args: argparse.Namespace) -> int:
    from ..clip.checkpoint import save_model
    from ..clip.factory import create_model
    from ..clip.lora import load_controller_lora, merge_controller_lora

    if not args.model:
        raise ValueError("--adapter needs --model NAME (the DA-CLIP architecture the adapter was trained on)")
    model = create_model(args.model, pretrained=str(args.input))
    load_controller_lora(model, args.adapter)
    merge_controller_lora(model)
    save_model(model, args.output, model_name=args.model)
    print(f"wrote {args.output}: {args.input} with the controller LoRA {args.adapter} merged in")
    return 0


def _is_main_process() -> bool:
    """Rank 0 of a multi-process launch (accelerate/torchrun set RANK), or a plain run."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _start_run(folder: Path, resume: bool, log_name: str) -> Optional[Path]:
    """Create a run folder (an existing one is archived unless resuming) and log into it (rank 0 only)."""
    import time

    if not _is_main_process():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if folder.exists() and any(folder.iterdir()) and not resume:
        archived = folder.with_name(f"{folder.name}_archived_{stamp}")
        folder.rename(archived)
        logger.warning("%s existed: moved to %s", folder, archived)
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{log_name}_{stamp}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return log_file


def _save_resolved(opt, folder: Path) -> None:
    import yaml

    from ..training.options import options_to_dict

    (folder / "options.yml").write_text(yaml.safe_dump(options_to_dict(opt), sort_keys=False))


def _trainer_for(opt):
    from ..training.tasks import get_task

    task = get_task(opt.task)
    return task.trainer_class()(opt), task.output


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.engine import Engine

    opt = _load_cli_options(args, is_train=True)
    if args.dry_run:
        from ..training.dry_run import dry_run, format_dry_run

        print(format_dry_run(dry_run(opt)))
        return 0
    exp = Path(opt.path.experiments_root)
    log_file = _start_run(exp, resume=bool(opt.path.resume_state), log_name="train")
    if _is_main_process():
        for key in ("models", "training_state", "val_images"):
            Path(getattr(opt.path, key)).mkdir(parents=True, exist_ok=True)
        _save_resolved(opt, exp)
    trainer, output = _trainer_for(opt)
    result = Engine(opt, trainer).fit()
    if not _is_main_process():
        return 0
    print(f"trained {result.step} steps in {result.seconds:.0f} s; final loss {result.losses[-1]:.4f}")
    for step, metrics in sorted(result.validations.items())[-1:]:
        print(f"validation @ {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"outputs: {Path(opt.path.models) / output}")
    print(f"checkpoints: {opt.path.training_state}")
    print(f"log: {log_file}")
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from ..training.tasks import TASKS, get_task

    opt = _load_cli_options(args, is_train=False)
    results = Path(opt.path.results_root)
    evaluate = get_task(opt.task).evaluator()
    if evaluate is None:
        testable = [name for name, spec in TASKS.items() if spec.evaluate]
        raise ValueError(f"task {opt.task!r} is not available in this version; use {' or '.join(map(repr, testable))}")
    log_file = _start_run(results, resume=False, log_name="test")
    _save_resolved(opt, results)
    if opt.task == "controller":
        for key, report in evaluate(opt, adapter=args.adapter).items():
            print(f"[{key}] zero-shot degradation accuracy\n{report.table()}\n")
        print(f"results: {results} (JSON, CSV, confusion PNG)\nlog: {log_file}")
        return 0
    from ..training.tasks.restoration import format_restoration_table

    report = evaluate(opt, folder=_weights_folder(args) if args.weights else None)
    print(format_restoration_table(report))
    print(f"results: {results} (metrics.json, metrics.csv, restored images and LQ|restored|GT grids)\nlog: {log_file}")
    return 0


def _demo_table(summary: Dict[str, Any]) -> str:
    """The demo's held-out figures, one row per split (new crops of the training photographs; new photographs)."""
    rows = [("new crops (val)", summary)]
    if summary.get("new_photographs", {}).get("psnr_lq") is not None:
        rows.append((f"new photographs ({', '.join(summary['new_photographs']['images'])})",
                     summary["new_photographs"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {'held-out split':<{width}}  degradation acc.  PSNR LQ  UNet alone  wrong DA-CLIP  with head"
             f"  improved (UNet / head)"]
    for name, r in rows:
        n = len(r["restoration_per_degradation"])
        lines.append(f"  {name:<{width}}  {r['controller_accuracy_before']:.3f} -> {r['controller_accuracy_after']:.3f}"
                     f"    {r['psnr_lq']:6.2f}  {r['psnr_unet']:10.2f}  {r['psnr_unet_wrong_embedding']:13.2f}"
                     f"  {r['psnr_restored']:9.2f}  {r['unet_degradations_improved']}/{n} / "
                     f"{r['degradations_improved']}/{n}")
    lines.append(f"  (PSNR in dB; degradation accuracy of DA-CLIP before -> after the controller LoRA, chance "
                 f"{summary['chance']:.3f})")
    quality = summary.get("quality")
    if quality:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in quality["mean"].items() if k != "n")
        lines.append(f"  quality of the restored {quality['split']} split: {scores}"
                     + (f"; skipped (no weights here or no pyiqa): {', '.join(quality['skipped'])}"
                        if quality["skipped"] else ""))
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"embedded demo ({summary['preset']}) finished in {summary['seconds']:.0f} s -> {args.out}")
    print(f"  dataset            {summary['dataset']}")
    print(f"  DA-CLIP base       {summary['daclip_base']}")
    print(f"  controller LoRA    {summary['controller_lora']} ({summary['controller_trainable']:,} trainable, "
          f"{summary['controller_trainable_percent']:.2f}% of the controller)")
    print(f"  SD base (tiny, pretrained, shipped) {summary['sd_base']}")
    print(f"  SD LoRA            {summary['sd_lora']}")
    print(_demo_table(summary))
    print(f"  restored images    {summary['results']} (overview: {summary['overview']})")
    print(f"  summary            {Path(args.out) / 'summary.json'}")
    return 0


def _restore_paths(args: argparse.Namespace) -> None:
    """Check ``restore``'s paths and flags before anything heavy is imported; sets ``args.folder``, the
    restoration folder to load."""
    from ..restoration.locate import find_restoration_folder
    from ..tiny.locate import demonstration_notice, embedded_restorer

    if not args.input.exists():
        raise FileNotFoundError(f"--input {args.input} does not exist; pass an image file or a folder of images")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {args.quality}")
    if not 0 <= args.lora_scale <= 4:
        raise ValueError(f"--lora-scale must be in [0, 4] (1 = as trained), got {args.lora_scale}")
    _restore_gt_paths(args)
    if args.output.exists() and not args.output.is_dir():
        raise NotADirectoryError(f"--output {args.output} is a file; pass a folder (it is created if missing)")
    if args.scheduler is not None:
        from ..restoration.schedulers import scheduler_name

        scheduler_name(args.scheduler)  # an unknown name fails before the models load
    if args.weights is None:
        print(demonstration_notice("--weights experiments/<name>/models/restoration"), file=sys.stderr)
    args.folder = embedded_restorer() if args.weights is None else _weights_folder(args)


def _weights_folder(args: argparse.Namespace) -> Path:
    """``--weights``: a restoration folder (or one above it), or a ``training_state/<step>`` checkpoint, exported
    into a temporary folder kept for the command's lifetime."""
    from ..restoration.locate import find_restoration_folder

    if (Path(args.weights) / "state.json").is_file():
        from ..training.export import export_to_temporary

        result, args.export_handle = export_to_temporary(args.weights)
        print(f"note: --weights {args.weights} is a training checkpoint: restoring with its step-{result.step} "
              f"{result.weights} weights" + (f" ({result.note})" if result.note else ""), file=sys.stderr)
        return result.folder
    return find_restoration_folder(args.weights)


#: ``restore``'s multi-step sampling flags and their defaults (``None`` on the command line: not given)
SAMPLING_DEFAULTS = {"steps": 25, "scheduler": "ddim", "strength": 1.0, "seed": 0}


def _sampling_arguments(args: argparse.Namespace, pipe: Any) -> Dict[str, Any]:
    """The sampling arguments of ``restore``; a warning line for each given one the model does not use."""
    given = [name for name in SAMPLING_DEFAULTS if getattr(args, name) is not None]
    for name in pipe.ignored_arguments(given):
        logger.warning("--%s %s does not apply to this one-step model (one UNet call from the LQ latent); ignored",
                       name, getattr(args, name))
    return {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in SAMPLING_DEFAULTS.items()}


def _restore_gt_paths(args: argparse.Namespace) -> None:
    """``restore --gt/--metrics``: the folder exists and the names are metrics (no torch yet)."""
    if args.gt is not None and not args.gt.is_dir():
        raise FileNotFoundError(f"--gt {args.gt} is not a folder")
    if args.metrics is not None and args.gt is None:
        raise ValueError("--metrics scores the outputs against --gt; pass --gt DIR (or use `daclip-lora evaluate`)")
    if args.gt is not None:
        from ..metrics.protocol import resolve_metrics

        resolve_metrics(args.metrics or RESTORE_METRICS, has_gt=True)


class _MetricNames(argparse.Action):
    """``--metrics psnr ssim``, ``--metrics psnr,ssim`` or both mixed: one list of names."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        from ..metrics.protocol import split_metric_names

        setattr(namespace, self.dest, split_metric_names(values))


#: what ``restore --gt`` scores without ``--metrics``
RESTORE_METRICS = ("psnr_y", "ssim_y")


def _restore_metrics(args: argparse.Namespace) -> None:
    """Create ``restore --gt``'s metrics before restoring: a missing weight or extra fails first, not after."""
    if args.gt is None:
        return
    from ..metrics import METRICS, create_metrics

    create_metrics([METRICS[m] for m in args.metrics or RESTORE_METRICS])


def _score_restored(args: argparse.Namespace, written: List[Path]) -> None:
    from ..metrics import evaluate_folders, format_evaluation, write_evaluation

    if args.gt is None or not written:
        return
    report = evaluate_folders(args.output, args.gt, metrics=args.metrics or RESTORE_METRICS)
    print(format_evaluation(report))
    print(f"scores and their protocol: {write_evaluation(report, args.output)[0]}")


def _cmd_restore(args: argparse.Namespace) -> int:
    from ..restoration.pipeline import RestorationPipeline

    if getattr(args, "folder", None) is None:
        _restore_paths(args)
    _restore_metrics(args)
    pipe = RestorationPipeline.from_pretrained(args.folder, base=args.base, daclip_pretrained=args.daclip,
                                               merge_lora=not args.no_merge, device=args.device,
                                               precision=args.precision, lora_scale=args.lora_scale)
    if args.compile:
        pipe.compile()
    report = pipe.restore_folder(args.input, args.output, batch_size=args.batch_size, grid=args.grid,
                                 quality=args.quality, output_format=args.format,
                                 skip_existing=args.skip_existing, guidance_scale=args.guidance,
                                 color_fix=args.color_fix, degradation=args.degradation,
                                 tile_size=args.tile_size, tile_overlap=args.tile_overlap, **_sampling_arguments(args, pipe))
    if report.existing:
        print(f"kept {len(report.existing)} output(s) of an earlier run (--skip-existing)")
    print(f"restored {len(report.written)} image(s) -> {args.output}"
          + (f" (side-by-side grids in {Path(args.output) / 'grids'})" if args.grid else "")
          + ("; DA-CLIP's reading of each: degradations.json" if report.degradations else ""))
    for path in report.skipped:
        print(f"  not an image, not restored: {path}")
    for path, reason in report.failed:
        print(f"  failed: {reason}")
    _score_restored(args, report.written)
    return 1 if report.failed else 0


def _degradation_model(args: argparse.Namespace) -> tuple:
    """``(model name, checkpoint, adapter, crop)`` for ``degradation``: explicit flags over the restoration
    folder's record (``--weights``, default the shipped tiny restorer: its DA-CLIP base, controller LoRA and
    ``daclip_crop``)."""
    if args.model and not args.weights:
        return args.model, args.pretrained, args.adapter, args.crop
    from ..restoration.locate import find_restoration_folder
    from ..restoration.serialization import read_restoration_config
    from ..tiny.locate import demonstration_notice, embedded_restorer

    if not args.weights and not args.pretrained:
        print(demonstration_notice("--model daclip_ViT-B-32 --pretrained daclip_ViT-B-32.pt, or --weights"),
              file=sys.stderr)
    config = read_restoration_config(find_restoration_folder(args.weights) if args.weights else embedded_restorer())
    return (args.model or config.daclip_model, args.pretrained or config.daclip_pretrained,
            args.adapter or config.daclip_adapter, args.crop or config.daclip_crop)


def _degradation_paths(args: argparse.Namespace) -> None:
    """Check ``degradation``'s arguments before anything heavy is imported."""
    if not args.input.exists():
        raise FileNotFoundError(f"{args.input} does not exist; pass an image file or a folder of images")
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    if args.crop is not None and args.crop < 16:
        raise ValueError(f"--crop must be at least 16 pixels, got {args.crop}")


def _cmd_degradation(args: argparse.Namespace) -> int:
    from ..data.images import ImageError, list_images, read_image

    _degradation_paths(args)
    files = [args.input] if args.input.is_file() else list_images(args.input, strict=False)[0]
    name, pretrained, adapter, crop = _degradation_model(args)
    import torch

    from ..clip.factory import get_tokenizer, load_daclip
    from ..clip.zero_shot import DegradationProbabilities
    from ..data.datasets import degradation_embeddings, view_side
    from ..data.degrade import DEGRADATION_FUNCTIONS

    model = load_daclip(name, pretrained, adapter).eval()
    probs = DegradationProbabilities(model, get_tokenizer(name), args.words or list(DEGRADATION_FUNCTIONS))
    results, failed = {}, 0
    for path in files:
        try:
            image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
        except (ImageError, OSError) as e:
            print(f"  failed: {e}", file=sys.stderr)
            failed += 1
            continue
        with torch.no_grad():
            degra = degradation_embeddings(model, image, crop)
        results[str(path)] = probs.as_dicts(probs.from_embeddings(degra))[0]
    print(_probability_table(results, args.top))
    print(f"DA-CLIP {name} ({pretrained or 'random weights'}{', adapter ' + str(adapter) if adapter else ''}); "
          f"probabilities use the model's own logit scale ({probs.scale:.2f}); images larger than "
          f"{view_side(model.image_size, crop)} px are read as the mean of native-resolution crops of that size")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": name, "pretrained": pretrained, "adapter": adapter,
                                         "logit_scale": probs.scale, "images": results}, indent=2))
        print(f"probabilities of every word: {args.json}")
    return 1 if failed else 0


def _probability_table(results: Dict[str, Dict[str, float]], top: int) -> str:
    """One line per image: its ``top`` most probable degradations."""
    width = max([len("image")] + [len(Path(p).name) for p in results])
    lines = [f"{'image':<{width}}  most probable degradations"]
    for path, probs in results.items():
        best = sorted(probs.items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"{Path(path).name:<{width}}  " + "  ".join(f"{w} {p:.2f}" for w, p in best))
    return "\n".join(lines)


def _cmd_make_tiny_base(args: argparse.Namespace) -> int:
    from .demo import train_tiny_restorer
    from ..tiny.recipes import train_tiny_daclip, train_tiny_sd

    if args.restorer and args.daclip:
        raise ValueError("make-tiny-base: pass --restorer or --daclip, not both (they make different folders)")
    if args.daclip:
        record = train_tiny_daclip(args.out, seed=args.seed, steps=args.daclip_steps)
        print(f"tiny pretrained DA-CLIP base -> {args.out} in {record['seconds']['total']:.0f} s: held-out probe "
              f"accuracy {record['held_out_probe_accuracy']['overall']:.3f} on new crops, "
              f"{record['new_photographs_probe_accuracy']['overall']:.3f} on new photographs; zero-shot "
              f"{record['held_out_zero_shot_accuracy']['overall']:.3f} (recipe.json has the details)")
        return 0
    if args.restorer:
        record = train_tiny_restorer(args.out, seed=args.seed)
        demo = record["demo"]
        print(f"tiny restorer -> {args.out}: degradation accuracy {demo['controller_accuracy_after']:.3f}, "
              f"held-out PSNR {demo['psnr_lq']:.2f} (LQ) -> {demo['psnr_restored']:.2f} dB (recipe.json has the "
              f"details)")
        return 0

    record = train_tiny_sd(args.out, seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                           batch=args.batch)
    print(f"tiny pretrained SD base -> {args.out} in {record['seconds']:.0f} s: VAE held-out reconstruction PSNR "
          f"{record['vae']['held_out_reconstruction_psnr_db']:.2f} dB, UNet held-out noise MSE "
          f"{record['unet']['held_out_noise_mse']} (recipe.json has the details)")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    from .web import AppSettings, launch, require_gradio

    require_gradio()
    for flag, path in (("--weights", args.weights), ("-opt", args.opt_file)):
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    settings = AppSettings(weights=args.weights and str(args.weights), options=args.opt_file and str(args.opt_file),
                           base=args.base, daclip_pretrained=args.daclip, degradations=args.degradations,
                           device=args.device, max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb,
                           cache_seconds=int(args.cache_minutes * 60))
    if args.weights is None and args.opt_file is None:
        from ..tiny.locate import demonstration_notice

        print(demonstration_notice("--weights experiments/<name>/models/restoration (or -opt test.yml)"),
              file=sys.stderr)
    print(f"daclip-lora app on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    launch(settings, host=args.host, port=args.port, share=args.share)
    return 0


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.synthetic import make_dataset

    distortions = args.distortion or None
    n_deg = len(distortions) if distortions else 10
    val_size = args.val_size if args.val_size is not None else max(2, args.size // 4)
    bars = []

    def progress(n: int) -> None:  # the bar appears once the inputs have been validated
        if not bars:
            total = n_deg * (args.size + val_size + args.calib_size + args.test_size)
            bars.append(tqdm(total=total, desc="make-dataset", unit="img"))
        bars[0].update(n - bars[0].n)

    try:
        manifest = make_dataset(args.out, source=args.source, distortions=distortions, size=args.size,
                                val_size=args.val_size, patch_size=args.patch_size, seed=args.seed,
                                calib_size=args.calib_size, test_size=args.test_size, held_out=args.held_out,
                                overwrite=args.overwrite, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    counts = manifest["counts"]
    splits = " / ".join(f"{split} {sum(c.values())}" for split, c in counts.items())
    held_out = f"; test from held-out images {', '.join(manifest['held_out_images'])}" if "test" in counts else ""
    print(f"wrote {args.out}: {splits} LQ/GT pairs over {len(manifest['distortions'])} degradations; CSVs "
          f"{', '.join(f'daclip_{split}.csv' for split in counts)}{held_out}")
    return 0


# The short flags of the text-to-image LoRA scripts users come from, as option overrides.
SHORT_FLAGS = {"dataset": "datasets.train.dataroot", "prompts": "sd.validation_prompts", "steps": "train.niter",
               "batch": "datasets.train.batch_size", "unet_lr": "train.lr_G", "text_lr": "sd.text_encoder_lr"}


def _load_cli_options(args: argparse.Namespace, is_train: bool):
    from ..training.options import load_options

    overrides = [f"{key}={getattr(args, dest)}" for dest, key in SHORT_FLAGS.items()
                 if getattr(args, dest, None) is not None]
    if getattr(args, "resume", False):
        overrides.append("path.resume_state=auto")
    return load_options(args.opt_file, is_train=is_train, root=args.root, overrides=overrides + (args.opt or []),
                        check_paths=not getattr(args, "no_check_paths", False))


def _cmd_check_options(args: argparse.Namespace) -> int:
    import yaml

    from ..training.options import options_to_dict

    opt = _load_cli_options(args, is_train=args.train)
    print(yaml.safe_dump(options_to_dict(opt), sort_keys=False), end="")
    return 0


def _add_options_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-opt", "--options", dest="opt_file", type=Path, required=True, help="YAML options file")
    p.add_argument("--opt", action="append", metavar="KEY.SUB=VALUE",
                   help="override an option (repeatable), e.g. --opt train.lr_G=2e-4")
    p.add_argument("--root", type=Path, default=Path("."), help="folder for experiments/ and results/ (default: .)")


def _add_list_models(sub: Any) -> None:
    p = sub.add_parser("list-models", help="list the registered DA-CLIP model names")
    p.add_argument("--all", action="store_true", help="include open_clip's model names")
    p.set_defaults(func=_cmd_list_models)


def _add_env(sub: Any) -> None:
    p = sub.add_parser("env", help="print the installed dependency versions and whether they are supported")
    p.set_defaults(func=_cmd_env)


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite a DA-CLIP/CLIP checkpoint as .safetensors (no optimizer, no alias keys)",
        description="Rewrite a DA-CLIP or CLIP checkpoint (.pt/.pth/.safetensors) as .safetensors, "
                    "dropping optimizer state and the duplicated 'visual.*' alias keys.",
    )
    p.add_argument("input", type=Path, help="checkpoint to read (e.g. daclip_ViT-B-32.pt)")
    p.add_argument("output", type=Path, help="output file, ending in .safetensors")
    p.add_argument("--model", default=None,
                   help="model name to record in the metadata (default: inferred from the tensor shapes)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="controller LoRA folder to merge into INPUT (needs --model); writes a plain DA-CLIP "
                        "checkpoint that the original DA-CLIP code can load too")
    p.set_defaults(func=_cmd_convert)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train from a UIR-style options file (-opt X.yml)",
                       description="Train as the options file says (task: controller trains a LoRA on the "
                                   "DA-CLIP controller; task: restoration trains the degradation-aware SD LoRA). "
                                   "Outputs go to <root>/experiments/<name>/.")
    _add_options_args(p)
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


def _add_test(sub: Any) -> None:
    p = sub.add_parser("test", help="evaluate from a UIR-style options file (-opt X.yml)",
                       description="Evaluate as the options file says (task: controller: zero-shot degradation "
                                   "accuracy; task: restoration: restored images, PSNR/SSIM per degradation). "
                                   "Results go to <root>/results/<name>/.")
    _add_options_args(p)
    p.add_argument("--adapter", type=Path, default=None, help="controller LoRA folder (default: daclip.adapter)")
    p.add_argument("--weights", type=Path, default=None,
                   help="restoration folder (default: <root>/experiments/<name>/models/restoration)")
    p.set_defaults(func=_cmd_test)


def _add_make_dataset(sub: Any) -> None:
    p = sub.add_parser(
        "make-dataset",
        help="write a synthetic UIR MD tree (train/val) and DA-CLIP CSVs",
        description="Degrade clean patches with DA-CLIP's degradation types and write OUT/{train,val}/"
                    "<degradation>/{LQ,GT}/ plus OUT/daclip_{train,val}.csv. Deterministic for a seed.",
    )
    p.add_argument("out", type=Path, help="output folder (empty or missing)")
    p.add_argument("--source", default="builtin",
                   help="'builtin' (photographs shipped with scikit-image) or a folder of clean images")
    p.add_argument("--distortion", nargs="+", metavar="NAME", help="degradation names (default: all ten)")
    p.add_argument("--size", type=int, default=16, help="clean training patches (each under every degradation)")
    p.add_argument("--val-size", type=int, default=None, help="clean validation patches (default: size/4, >= 2)")
    p.add_argument("--calib-size", type=int, default=0,
                   help="clean patches of a 'calib' split (e.g. for fitting a fusion head; default: none)")
    p.add_argument("--test-size", type=int, default=0,
                   help="clean patches of a 'test' split cut only from the held-out images (default: none)")
    p.add_argument("--held-out", nargs="+", metavar="NAME", default=None,
                   help="source images (file stems) only the test split uses (default for builtin: "
                        "chelsea coffee gravel, which the shipped tiny bases never saw; none for a folder)")
    p.add_argument("--patch-size", type=int, default=128, help="patch side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=_cmd_make_dataset)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the embedded end-to-end demo on CPU (no downloads)",
                       description="Synthetic data from scikit-image photographs, the shipped tiny pretrained "
                                   "DA-CLIP, controller-LoRA training and evaluation, the shipped tiny pretrained SD, "
                                   "degradation-aware "
                                   "SD LoRA training and restoration of the held-out split; everything under --out.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--preset", choices=["full", "quick"], default="full",
                   help="'full' (a few CPU minutes) or 'quick' (seconds; a smoke test, numbers mean nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_demo)


def _add_restore_output_args(p: Any) -> None:
    """``restore``'s output files: grids, quality, format, resume."""
    p.add_argument("--grid", action="store_true", help="also write OUTPUT/grids/<name>.png (LQ | restored)")
    p.add_argument("--quality", "--jpeg-quality", dest="quality", type=int, default=None,
                   help="quality (1-100) of restored JPEGs, or of lossy WebPs (default: each JPEG input's own "
                        "quantisation tables, i.e. its quality; WebP lossless)")
    p.add_argument("--format", choices=["png", "jpg", "tif", "webp"], default=None,
                   help="write every output in this format (default: each input's own format and bit depth; "
                        "ICC profile, EXIF with the orientation applied, grayscale and alpha are kept)")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume an interrupted run: leave inputs whose output exists and decodes (outputs are "
                        "written atomically, so a killed run leaves no half-written file)")


def _add_restore(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore an image or a folder of images with a trained restoration LoRA",
                       description="Restore every image of INPUT (a folder, with its sub-folders, or one file) "
                                   "into OUTPUT, keeping relative paths, file names and formats. Images larger "
                                   "than the base's native size are restored in "
                                   "blended tiles. Unreadable files are listed, never skipped silently "
                                   "(exit code 1 if any failed).")
    p.add_argument("--weights", type=Path, default=None,
                   help="restoration folder written by training (experiments/<name>/models/restoration), the folder "
                        "above it, or a `daclip-lora demo` output folder (default: the shipped tiny restorer, "
                        "trained on 64 px synthetic degradations: a demonstration, not a photo restorer)")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--base", default=None, help="SD base folder (default: the one recorded in the weights)")
    p.add_argument("--daclip", default=None, help="DA-CLIP checkpoint (default: the one recorded in the weights)")
    one_step = " (multi-step models only: one-step models, the shipped restorer and the demo's included, warn " \
               "and ignore it)"
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 25)" + one_step)
    p.add_argument("--scheduler", default=None,
                   help="ddim, dpm++ or euler, aliases such as dpmpp_2m accepted (default: ddim)" + one_step)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1, off)")
    p.add_argument("--lora-scale", type=float, default=1.0,
                   help="fidelity / perception: the UNet LoRA's strength, 0 (the base UNet: close to the input) to "
                        "1 (as trained, default); above 1 extrapolates")
    p.add_argument("--color-fix", choices=["none", "wavelet", "adain", "auto"], default="none",
                   help="give the result the LQ's colours: wavelet (its low frequencies), adain (its channel "
                        "statistics), auto (wavelet unless DA-CLIP reads a low-frequency degradation such as low "
                        "light or haze); default none")
    p.add_argument("--degradation", default=None, metavar="WORD",
                   help="condition on the DA-CLIP text embedding of this degradation word (e.g. hazy) instead of "
                        "each image's own degradation embedding (DA-CLIP's reading is still written to "
                        "OUTPUT/degradations.json)")
    p.add_argument("--strength", type=float, default=None,
                   help="< 1 starts from the noised LQ latent (default: 1)" + one_step)
    p.add_argument("--seed", type=int, default=None, help="sampling noise seed (default: 0)" + one_step)
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile side in pixels (default: the base's native size; 0 disables tiling)")
    p.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: tile/4)")
    p.add_argument("--batch-size", type=int, default=4, help="images of the same size restored together")
    _add_restore_output_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast dtype of the UNet and DA-CLIP (default: fp32; bf16 on recent GPUs)")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (slower; same outputs to 1e-4)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (channels_last): slow first batch, faster after")
    p.add_argument("--gt", type=Path, default=None,
                   help="ground-truth folder: score the outputs afterwards as `daclip-lora evaluate` does")
    p.add_argument("--metrics", nargs="+", metavar="NAME", default=None, action=_MetricNames,
                   help="metrics for --gt, space- or comma-separated (default: psnr_y ssim_y; any `evaluate` "
                        "metric)")
    p.set_defaults(func=_cmd_restore, precheck=_restore_paths)


def _add_degradation(sub: Any) -> None:
    p = sub.add_parser("degradation", help="DA-CLIP's zero-shot degradation probabilities of images",
                       description="Ask DA-CLIP what degradation each image has: the controller's degradation "
                                   "embedding against the degradation words, softmax with the model's own logit "
                                   "scale. Default model: the shipped tiny DA-CLIP with the tiny restorer's "
                                   "controller LoRA (trained on synthetic 64 px degradations).")
    p.add_argument("input", type=Path, help="an image file or a folder of images")
    p.add_argument("--weights", type=Path, default=None,
                   help="a restoration folder (or its parent, or a demo output folder): its recorded DA-CLIP")
    p.add_argument("--model", default=None, help="DA-CLIP model name, e.g. daclip_ViT-B-32 (with --pretrained)")
    p.add_argument("--pretrained", default=None, help="DA-CLIP checkpoint, e.g. daclip_ViT-B-32.pt")
    p.add_argument("--adapter", default=None, help="a controller-LoRA folder written by training")
    p.add_argument("--words", nargs="+", metavar="WORD", default=None,
                   help="degradation words (default: DA-CLIP's ten)")
    p.add_argument("--top", type=int, default=3, help="degradations shown per image (default: 3)")
    p.add_argument("--crop", type=int, default=None,
                   help="read images larger than this as the mean of native-resolution crops of this side (default: "
                        "the restorer's recorded training patch, else DA-CLIP's input size)")
    p.add_argument("--json", type=Path, default=None, help="also write every probability to this JSON file")
    p.set_defaults(func=_cmd_degradation, precheck=_degradation_paths)


def _evaluate_paths(args: argparse.Namespace) -> None:
    """Check ``evaluate``'s arguments (folders, metric names) before torch is imported."""
    from ..metrics.protocol import default_metrics, resolve_metrics

    for label, folder in (("--restored", args.restored), ("--gt", args.gt), ("--weights-dir", args.weights_dir)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{label} {folder} is not a folder")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    resolve_metrics(args.metrics or default_metrics(args.gt is not None), has_gt=args.gt is not None)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import DEFAULT_METRICS, evaluate_folders, format_evaluation, write_evaluation

    report = evaluate_folders(args.restored, args.gt, metrics=args.metrics or DEFAULT_METRICS, device=args.device,
                              batch_size=args.batch_size, crop_border=args.crop_border,
                              weights_dir=args.weights_dir, skip_missing=args.skip_missing, progress=True)
    print(format_evaluation(report))
    out = args.out or args.restored
    paths = write_evaluation(report, out)
    print(f"per-image scores, means and the protocol of every number: {', '.join(str(p) for p in paths)}")
    return 0


def _add_evaluate(sub: Any) -> None:
    from ..metrics.protocol import DEFAULT_METRICS, METRICS

    p = sub.add_parser("evaluate", help="image-quality metrics of restored images (pyiqa), per folder and degradation",
                       description="Score restored images against their ground truth (paired by file name) and/or "
                                   "with no-reference metrics, through pyiqa (the metrics extra); PSNR/SSIM fall "
                                   "back to the package's own without it. Sub-folders (UIR MD trees) get their own "
                                   "rows. Writes metrics.json (with each metric's pyiqa id, options and version), "
                                   "metrics.csv and metrics_summary.csv.")
    p.add_argument("--restored", type=Path, required=True, help="folder of restored images (searched recursively)")
    p.add_argument("--gt", type=Path, default=None,
                   help="ground-truth folder: x.* beside the same sub-folder, its GT/ sub-folder, or the top")
    p.add_argument("--metrics", nargs="+", metavar="NAME", default=None, action=_MetricNames,
                   help=f"space- or comma-separated, any of {', '.join(METRICS)} (default: "
                        f"{' '.join(DEFAULT_METRICS)}; without --gt the no-reference ones)")
    p.add_argument("--crop-border", type=int, default=0, help="pixels cropped from each side for PSNR/SSIM")
    p.add_argument("--device", default="cpu", help="torch device of the metric networks (default: cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images of one size scored together (default: 1)")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="folder used as torch's hub folder for metric weights (pyiqa/, checkpoints/, clip/)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip metrics whose weights (or pyiqa) are missing, listing them, instead of failing")
    p.add_argument("--out", type=Path, default=None, help="where the reports go (default: the --restored folder)")
    p.set_defaults(func=_cmd_evaluate, precheck=_evaluate_paths)


def _add_app(sub: Any) -> None:
    p = sub.add_parser("app", help="web page: degradation probabilities and before/after restoration (Gradio)",
                       description="Serve the restoration web app (pip install -e \".[app]\"). Without --weights or "
                                   "-opt it runs the embedded tiny models on the CPU.")
    p.add_argument("--weights", type=Path, default=None,
                   help="restoration folder (experiments/<name>/models/restoration) or a demo output folder")
    p.add_argument("-opt", "--options", dest="opt_file", type=Path, default=None,
                   help="a restoration test options file (its weights, base, DA-CLIP and degradation words)")
    p.add_argument("--base", default=None, help="SD base folder (default: the one recorded in the weights)")
    p.add_argument("--daclip", default=None, help="DA-CLIP checkpoint (default: the one recorded in the weights)")
    p.add_argument("--degradations", nargs="+", metavar="WORD",
                   help="degradation words for DA-CLIP's probabilities (default: the options' or the ten)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest upload in pixels (default 1 Mpx)")
    p.add_argument("--max-upload-mb", type=float, default=None,
                   help="largest upload file in MB (default: 8 bytes a pixel of --max-pixels, 8 MB for 1 Mpx)")
    p.add_argument("--cache-minutes", type=float, default=60,
                   help="uploads and results are deleted after this many minutes (default 60; all at exit)")
    p.set_defaults(func=_cmd_app)


def _add_make_tiny_base(sub: Any) -> None:
    p = sub.add_parser("make-tiny-base", help="re-create the tiny pretrained bases that ship with the package",
                       description="Train the tiny SD base (VAE, then UNet denoiser) from scikit-image photographs, "
                                   "deterministically, and write it in diffusers format with recipe.json. The "
                                   "shipped copy is daclip_lora/tiny/assets/tiny_sd (about 28 minutes on 2 CPU cores). "
                                   "--daclip makes the tiny DA-CLIP base instead, --restorer the web app's "
                                   "restorer (which needs both bases).")
    p.add_argument("out", type=Path, help="output folder (replaced if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--daclip", action="store_true",
                   help="make the tiny DA-CLIP base instead: its vision tower pretrained on the synthetic "
                        "degradations (shipped copy: daclip_lora/tiny/assets/tiny_daclip, about 15 minutes)")
    p.add_argument("--daclip-steps", type=int, default=4500, help="training steps of --daclip (default 4500)")
    p.add_argument("--restorer", action="store_true",
                   help="make the tiny restorer the web app starts with instead (the embedded demo's controller "
                        "LoRA and restoration LoRA on the shipped bases; shipped copy: "
                        "daclip_lora/tiny/assets/tiny_restorer)")
    p.set_defaults(func=_cmd_make_tiny_base)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..training.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.output, options=args.options, raw=args.raw)
    print(f"exported step {result.step} ({result.weights} weights) of a {result.task} run -> {result.folder}")
    if result.note:
        print(f"note: {result.note}")
    return 0


def _export_paths(args: argparse.Namespace) -> None:
    from ..training.export import is_training_state

    if not is_training_state(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} is not a training-state folder (no state.json and "
                                f"trainable.safetensors); pass experiments/<name>/training_state/<step> or .../best")
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output {args.output} is not empty; pass --overwrite to replace it")


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint into a folder restore/test/from_pretrained load",
                       description="Write the weights of a training_state/<step> (or training_state/best) folder as "
                                   "the task's folder: a restoration folder, a controller-LoRA folder or a "
                                   "diffusers LoRA. The model is rebuilt from the run's options.yml; no dataset is "
                                   "read. EMA weights are used when the run kept them.")
    p.add_argument("--checkpoint", type=Path, required=True, help="experiments/<name>/training_state/<step>")
    p.add_argument("--output", type=Path, required=True, help="the folder to write")
    p.add_argument("--options", type=Path, default=None,
                   help="the run's training options (default: experiments/<name>/options.yml beside the checkpoints)")
    p.add_argument("--raw", action="store_true", help="the raw weights, not their EMA")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.set_defaults(func=_cmd_export, precheck=_export_paths)


def _add_check_options(sub: Any) -> None:
    p = sub.add_parser("check-options", help="load and validate an options file, print the resolved options",
                       description="Load a UIR-style options file exactly as train/test would and print the "
                                   "resolved, typed options as YAML.")
    _add_options_args(p)
    p.add_argument("--train", action="store_true", help="resolve as a training file (default: test)")
    p.add_argument("--no-check-paths", action="store_true", help="do not require input paths to exist")
    p.set_defaults(func=_cmd_check_options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daclip-lora",
        description="DA-CLIP on open_clip: checkpoints, controller LoRA and SD LoRA restoration.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_list_models, _add_env, _add_convert, _add_train, _add_test, _add_make_dataset, _add_demo,
                _add_restore, _add_degradation, _add_evaluate, _add_app, _add_make_tiny_base, _add_check_options,
                _add_export):
        add(sub)
    return parser


def _user_errors() -> tuple:
    return USER_ERRORS + (MissingExtraError,)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(levelname)s: %(message)s",
    )
    try:
        if getattr(args, "precheck", None):  # the command's paths, before the dependency check imports anything
            args.precheck(args)
        if args.command in CHECKED_COMMANDS:
            from .._utils.compat import check_dependencies

            check_dependencies()
        return args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"daclip-lora {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # engine.TrainingInterrupted says where the checkpoint is
        print(f"daclip-lora {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
