"""``daclip-lora make-dataset``: a synthetic UIR tree and DA-CLIP CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ...data.synthetic import make_dataset

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


def register(sub: Any) -> None:
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
