"""Synthetic restoration data: clean patches x degradations, written as UIR ``MD`` trees + DA-CLIP CSVs.

``builtin`` uses photographs that ship inside scikit-image (no network). The layout written is::

    OUT/train/<degradation>/{LQ,GT}/<index>.png     OUT/val/<degradation>/{LQ,GT}/<index>.png
    OUT/calib/<degradation>/{LQ,GT}/<index>.png     (only with calib_size > 0)
    OUT/test/<degradation>/{LQ,GT}/<index>.png      (only with test_size > 0: the held-out photographs)
    OUT/daclip_<split>.csv                          (tab-separated filepath, "caption: degradation")
    OUT/dataset.json                                (what was made, and how)

Every clean patch appears under every degradation, so degradation labels cannot be read from content.
``train``, ``val`` and ``calib`` are crops of the same photographs (``val`` and ``calib`` are new crops and new
degradation draws); ``test`` is cut only from *held-out* photographs that no other split uses. For ``builtin``
these are :data:`HELD_OUT_IMAGES`, which the shipped tiny bases never saw either.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .degrade import DEGRADATION_FUNCTIONS, degrade
from .images import list_images, read_image, write_image

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN_IMAGES", "HELD_OUT_IMAGES", "builtin_images", "folder_images", "make_dataset", "random_patches"]

# skimage.data photographs bundled with the package (no download), with a caption each.
BUILTIN_IMAGES: Dict[str, str] = {
    "astronaut": "a portrait of an astronaut in an orange suit",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking sideways",
    "rocket": "a rocket on a launch pad",
    "hubble_deep_field": "a deep field of galaxies in space",
    "immunohistochemistry": "a microscope image of stained tissue",
    "retina": "a photograph of a human retina",
    "colorwheel": "a colour wheel",
    "camera": "a black and white photo of a cameraman",
    "coins": "a black and white photo of old coins",
    "brick": "a brick wall texture",
    "grass": "a grass texture",
    "gravel": "a gravel texture",
    "moon": "a black and white photo of the lunar surface",
}

#: ``builtin`` photographs kept out of every training split: none of the shipped tiny bases (VAE, UNet, DA-CLIP
#: tower) saw them, and :func:`make_dataset`'s ``test`` split is cut from them only.
HELD_OUT_IMAGES = ("chelsea", "coffee", "gravel")


def _as_float_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def builtin_images() -> List[Tuple[str, np.ndarray, str]]:
    """``(name, image, caption)`` for the scikit-image photographs (float RGB in [0, 1])."""
    from skimage import data

    return [(name, _as_float_rgb(getattr(data, name)()), caption) for name, caption in BUILTIN_IMAGES.items()]


def folder_images(folder: Union[str, Path]) -> List[Tuple[str, np.ndarray, str]]:
    """Images of a folder; the caption is a same-stem ``.txt`` if present, else the file stem."""
    images, _ = list_images(folder, strict=False)
    out = []
    for p in images:
        txt = p.with_suffix(".txt")
        caption = " ".join(txt.read_text(encoding="utf-8").split()) if txt.is_file() \
            else p.stem.replace("_", " ").replace("-", " ")
        out.append((p.stem, read_image(p), caption))
    return out


def random_patches(sources: List[Tuple[str, np.ndarray, str]], count: int, size: int,
             rng: np.random.Generator) -> List[Tuple[np.ndarray, str, str]]:
    """``count`` random ``size``-square crops, cycling over the sources (downscaled when large)."""
    out = []
    for i in range(count):
        name, img, caption = sources[i % len(sources)]
        h, w = img.shape[:2]
        # Crop a window of 1-2.5 patch sizes and resize it, so patches keep some scene context.
        win = int(min(h, w, size * rng.uniform(1.0, 2.5)))
        win = max(win, min(h, w, size))
        top, left = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
        crop = img[top:top + win, left:left + win]
        if crop.shape[0] != size or crop.shape[1] != size:
            from skimage.transform import resize

            crop = resize(crop, (size, size), order=3, anti_aliasing=True, preserve_range=True).astype(np.float32)
        out.append((np.clip(crop, 0, 1), caption, name))
    return out


def _split_sources(sources: List[Tuple[str, np.ndarray, str]], held_out: Sequence[str], test_size: int
                   ) -> Tuple[list, list]:
    """``(training sources, held-out sources)``: ``held_out`` names images (file stems) that only ``test`` uses."""
    if test_size < 0:
        raise ValueError(f"test_size must be >= 0, got {test_size}")
    names = [s[0] for s in sources]
    unknown = [n for n in held_out if n not in names]
    if unknown:
        from .._utils.suggest import suggest

        raise ValueError(f"held-out image {unknown[0]!r} is not among the source images ({', '.join(names)})."
                         f"{suggest(unknown[0], names)}")
    if test_size and not held_out:
        raise ValueError(f"test_size={test_size} needs held-out images: name the source images (file stems) that "
                         f"only the test split may use (--held-out NAME ...)")
    train = [s for s in sources if s[0] not in held_out]
    if not train:
        raise ValueError(f"every source image is held out ({', '.join(held_out)}); keep at least one for training")
    return train, [s for s in sources if s[0] in held_out]


def _check_arguments(distortions: Optional[Sequence[str]], size: int, patch_size: int, calib_size: int
                     ) -> List[str]:
    distortions = list(distortions or DEGRADATION_FUNCTIONS)
    unknown = [d for d in distortions if d not in DEGRADATION_FUNCTIONS]
    if unknown:
        from .._utils.suggest import suggest

        raise ValueError(f"unknown degradation {unknown[0]!r}; available: {', '.join(DEGRADATION_FUNCTIONS)}."
                         f"{suggest(unknown[0], DEGRADATION_FUNCTIONS)}")
    if size < 1 or patch_size < 16 or calib_size < 0:
        raise ValueError(f"size must be >= 1, calib_size >= 0 and patch_size >= 16, got size={size}, "
                         f"calib_size={calib_size}, patch_size={patch_size}")
    return distortions


#: each split's own stream of degradation draws
_SPLIT_INDEX = {"train": 0, "val": 1, "calib": 2, "test": 3}


class _Counter:
    """Images written so far, reported to ``progress`` after each one."""

    def __init__(self, progress: Optional[Callable[[int], None]]):
        self.written, self.progress = 0, progress

    def add(self) -> None:
        self.written += 1
        if self.progress:
            self.progress(self.written)


def _write_split(out: Path, split: str, split_index: int, patches: list, distortions: Sequence[str], seed: int,
                 counter: _Counter) -> Dict[str, int]:
    """Write one split's LQ/GT pairs for every degradation and its DA-CLIP CSV; the count per degradation."""
    rows = []
    for d_index, deg in enumerate(distortions):
        for i, (clean, caption, _) in enumerate(patches):
            lq = degrade(clean, deg, seed=[seed, split_index, d_index, i])
            name = f"{i:05d}.png"
            write_image(out / split / deg / "GT" / name, clean)
            write_image(out / split / deg / "LQ" / name, lq)
            rows.append((f"{split}/{deg}/LQ/{name}", f"{caption}: {deg}"))
            counter.add()
    with open(out / f"daclip_{split}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return {deg: len(patches) for deg in distortions}


def _draw_splits(sources: list, test_sources: list, sizes: Dict[str, int], patch_size: int, seed: int
                 ) -> Dict[str, list]:
    """The clean patches of each split: train, val and calib from one stream in that order (calib drawn last, so
    the other two stay what they are without it), test from its own stream over the held-out sources."""
    rng = np.random.default_rng(seed)
    splits = {"train": random_patches(sources, sizes["train"], patch_size, rng),
              "val": random_patches(sources, sizes["val"], patch_size, rng)}
    if sizes["calib"]:
        splits["calib"] = random_patches(sources, sizes["calib"], patch_size, rng)
    if sizes["test"]:
        splits["test"] = random_patches(test_sources, sizes["test"], patch_size, np.random.default_rng([seed, 3]))
    return splits


def make_dataset(
    out: Union[str, Path],
    source: str = "builtin",
    distortions: Optional[Sequence[str]] = None,
    size: int = 16,
    val_size: Optional[int] = None,
    patch_size: int = 128,
    calib_size: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    test_size: int = 0,
    held_out: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Write a synthetic UIR ``MD`` tree (train, val, optionally calib and test) and the matching DA-CLIP CSVs.

    Args:
        out: output folder; must be empty or missing unless ``overwrite``.
        source: ``"builtin"`` (scikit-image photographs) or a folder of clean images.
        distortions: DA-CLIP degradation names (default: all ten).
        size: clean training patches; each is written once per degradation.
        val_size: clean validation patches (default ``max(2, size // 4)``), cut from other crops.
        patch_size: side of the square patches.
        calib_size: clean patches of a third split, ``calib``, cut from other crops with their own degradation
            draws: data a model's training never sees but that is not the held-out test data (for example
            ``datasets.calib`` of a restoration run, where the fusion head is fitted). The train and val splits
            do not depend on it.
        seed: everything written is a deterministic function of the seed.
        overwrite: replace an existing non-empty ``out``.
        progress: called with the number of images written after each image.
        test_size: clean patches of a ``test`` split cut only from the ``held_out`` images (new photographs,
            not new crops of the training ones). The other splits do not depend on it.
        held_out: names (file stems) of source images that no split but ``test`` uses; default
            :data:`HELD_OUT_IMAGES` for ``builtin``, none for a folder.

    Returns:
        the manifest written to ``out/dataset.json``.
    """
    out = Path(out).expanduser()
    distortions = _check_arguments(distortions, size, patch_size, calib_size)
    val_size = max(2, size // 4) if val_size is None else val_size
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    sources = builtin_images() if source == "builtin" else folder_images(source)
    if held_out is None:
        held_out = HELD_OUT_IMAGES if source == "builtin" else ()
    sources, test_sources = _split_sources(sources, list(held_out), test_size)
    splits = _draw_splits(sources, test_sources, {"train": size, "val": val_size, "calib": calib_size,
                                                  "test": test_size}, patch_size, seed)
    counter = _Counter(progress)
    counts = {split: _write_split(out, split, _SPLIT_INDEX[split], patches, distortions, seed, counter)
              for split, patches in splits.items()}
    written = counter.written
    manifest = {"format_version": 2, "source": source, "distortions": distortions, "patch_size": patch_size,
                "seed": seed, "counts": counts, "images": [s[0] for s in sources],
                "held_out_images": [n for n in held_out if n in {s[0] for s in test_sources}],
                "train_csv": "daclip_train.csv", "val_csv": "daclip_val.csv"}
    for split in ("calib", "test"):
        if split in splits:
            manifest[f"{split}_csv"] = f"daclip_{split}.csv"
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2))
    logger.info("wrote %d LQ/GT pairs for %d degradations under %s", written, len(distortions), out)
    return manifest
