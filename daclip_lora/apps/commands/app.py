"""``daclip-lora app``: the web page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _cmd_app(args: argparse.Namespace) -> int:
    from ..web import AppSettings, launch, require_gradio

    require_gradio()
    for flag, path in (("--weights", args.weights), ("-opt", args.opt_file)):
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    settings = AppSettings(weights=args.weights and str(args.weights), options=args.opt_file and str(args.opt_file),
                           base=args.base, daclip_pretrained=args.daclip, degradations=args.degradations,
                           device=args.device, max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb,
                           cache_seconds=int(args.cache_minutes * 60))
    if args.weights is None and args.opt_file is None:
        from ...tiny.locate import demonstration_notice

        print(demonstration_notice("--weights experiments/<name>/models/restoration (or -opt test.yml)"),
              file=sys.stderr)
    print(f"daclip-lora app on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    launch(settings, host=args.host, port=args.port, share=args.share)
    return 0


def register(sub: Any) -> None:
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
