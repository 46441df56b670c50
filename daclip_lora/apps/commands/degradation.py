"""``daclip-lora degradation``: DA-CLIP's zero-shot degradation probabilities of images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict


def _degradation_model(args: argparse.Namespace) -> tuple:
    """``(model name, checkpoint, adapter, crop)`` for ``degradation``: explicit flags over the restoration
    folder's record (``--weights``, default the shipped tiny restorer: its DA-CLIP base, controller LoRA and
    ``daclip_crop``)."""
    if args.model and not args.weights:
        return args.model, args.pretrained, args.adapter, args.crop
    from ...restoration.locate import find_restoration_folder
    from ...restoration.serialization import read_restoration_config
    from ...tiny.locate import demonstration_notice, embedded_restorer

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
    from ...data.images import ImageError, list_images, read_image

    _degradation_paths(args)
    files = [args.input] if args.input.is_file() else list_images(args.input, strict=False)[0]
    name, pretrained, adapter, crop = _degradation_model(args)
    import torch

    from ...clip.factory import get_tokenizer, load_daclip
    from ...clip.zero_shot import DegradationProbabilities
    from ...data.datasets import degradation_embeddings, view_side
    from ...data.degrade import DEGRADATION_FUNCTIONS

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


def register(sub: Any) -> None:
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
