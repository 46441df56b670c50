"""DA-CLIP's view of an image: zero-shot degradation accuracy of the whole image resized to the model's input
(``resize``) against the mean degradation embedding of native-resolution crops (``crops@N``), side by side on the
same images, with the shipped tiny DA-CLIP and the tiny restorer's controller LoRA (or --model/--pretrained).

Two sets: the demo's held-out splits (64 px patches: every view is the same there, which the run checks) and
large images, the scikit-image photographs at full size (303-512 px) with each of the ten synthetic degradations
applied at that size (seeded)::

    python bench/daclip_view.py --crops 64 96 128 224 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _embed(model, images: torch.Tensor, view: str) -> torch.Tensor:
    """Degradation embeddings ``(B, D)`` of ``images`` ``(B, 3, H, W)`` under ``view``: the package's own
    ``degradation_embeddings`` for ``crops@N``."""
    from daclip_lora.data.datasets import clip_batch, degradation_embeddings

    if view == "resize":
        return model.encode_image(clip_batch(images, model.image_size), control=True)[1]
    return degradation_embeddings(model, images, crop=int(view.split("@")[1]))


def _large_images(seed: int):
    """``(name, label, image)``: every built-in photograph at full size under every degradation."""
    from daclip_lora.data.degrade import DEGRADATIONS, degrade
    from daclip_lora.data.synthetic import HELD_OUT_IMAGES, builtin_images

    for name, img, _ in builtin_images():
        for d, deg in enumerate(DEGRADATIONS):
            yield ("held-out" if name in HELD_OUT_IMAGES else "seen"), deg, degrade(img, deg, seed=[seed, d])


def _split_images(root: Path):
    from daclip_lora.data.images import read_image

    for split in ("val", "test"):
        for deg_dir in sorted((root / split).iterdir()):
            for path in sorted((deg_dir / "LQ").glob("*.png")):
                yield split, deg_dir.name, read_image(path)


def _accuracy(model, probs, items, views):
    """{group: {view: [correct, total]}} over ``items`` ``(group, label, image)``."""
    words = probs.words
    table = {}
    for group, label, img in items:
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        for view in views:
            with torch.no_grad():
                p = probs.from_embeddings(_embed(model, x, view))[0]
            cell = table.setdefault(group, {}).setdefault(view, [0, 0])
            cell[0] += int(words[int(p.argmax())] == label)
            cell[1] += 1
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=int, nargs="+", default=[64, 128, 224], help="crop sides to compare")
    p.add_argument("--model", default=None)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile

    from daclip_lora.apps.demo import demo_data
    from daclip_lora.clip.factory import get_tokenizer, load_daclip
    from daclip_lora.clip.zero_shot import DegradationProbabilities
    from daclip_lora.data.degrade import DEGRADATIONS
    from daclip_lora.restoration.serialization import read_restoration_config
    from daclip_lora.tiny.locate import embedded_restorer

    config = read_restoration_config(embedded_restorer())
    name = args.model or config.daclip_model
    model = load_daclip(name, args.pretrained or config.daclip_pretrained,
                        args.adapter or (None if args.model else config.daclip_adapter)).eval()
    probs = DegradationProbabilities(model, get_tokenizer(name), list(DEGRADATIONS))
    views = ["resize"] + [f"crops@{c}" for c in args.crops]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        demo_data(Path(tmp), "full", args.seed)
        splits = _accuracy(model, probs, _split_images(Path(tmp) / "data"), views)
    large = _accuracy(model, probs, _large_images(args.seed), views)
    result = {"model": name, "views": views, "demo_splits": splits, "large_images": large,
              "seconds": round(time.perf_counter() - start, 1)}
    print(f"zero-shot degradation accuracy, {name} (views side by side on the same images)")
    print("| set | " + " | ".join(views) + " |")
    print("|---" * (len(views) + 1) + "|")
    for title, table in (("demo split", splits), ("full-size photographs", large)):
        for group, row in table.items():
            cells = " | ".join(f"{row[v][0] / row[v][1]:.3f} ({row[v][0]}/{row[v][1]})" for v in views)
            print(f"| {title}: {group} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"{result['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
