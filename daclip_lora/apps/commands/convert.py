"""``daclip-lora convert``: a DA-CLIP/CLIP checkpoint rewritten as safetensors (a controller LoRA merged in)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import logger


def _cmd_convert(args: argparse.Namespace) -> int:
    from ...clip.checkpoint import convert_checkpoint, load_state_dict
    from ...clip.factory import match_model_names

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
    from ...clip.checkpoint import save_model
    from ...clip.factory import create_model
    from ...clip.lora import load_controller_lora, merge_controller_lora

    if not args.model:
        raise ValueError("--adapter needs --model NAME (the DA-CLIP architecture the adapter was trained on)")
    model = create_model(args.model, pretrained=str(args.input))
    load_controller_lora(model, args.adapter)
    merge_controller_lora(model)
    save_model(model, args.output, model_name=args.model)
    print(f"wrote {args.output}: {args.input} with the controller LoRA {args.adapter} merged in")
    return 0


def register(sub: Any) -> None:
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
