"""Restoration and DA-CLIP datasets: LQGT folders, MD trees, DA-CLIP CSVs and caption folders.

Every sample is a dict of tensors and strings:

* restoration (``LQGT``, ``MD``): ``LQ`` and ``GT`` ``(3, H, W)`` in ``[0, 1]`` (same crop, flips and
  rotation), ``LQ_clip`` CLIP-ready at ``clip_size`` (default 224) (bicubic resize of the shorter side, centre
  crop, OpenAI mean/std, computed from the LQ patch as UIR does), ``degradation``, paths;
* captioned (``CSV``, ``captions``): ``image``, ``image_clip``, ``caption``, ``degradation`` (``""``
  for caption folders), path.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .images import ImageError, list_images, read_image

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "Pair", "Captioned", "RestorationDataset", "CaptionedDataset", "clip_tensor", "clip_batch",
           "clip_crops", "degradation_embeddings", "view_side",
           "PAIRINGS", "pair_lqgt", "pair_md", "read_daclip_csv", "read_caption_folder", "build_dataset",
           "block_pairs", "block_items", "degradation_groups"]

OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


class DatasetError(ValueError):
    """A dataset folder or file is malformed; the message names the offending files."""


@dataclass(frozen=True)
class Pair:
    lq: Optional[Path]  # None: made from the GT on the fly (``mode: GT``)
    gt: Path
    degradation: str = ""


@dataclass(frozen=True)
class Captioned:
    image: Path
    caption: str
    degradation: str = ""


def _names(paths: Sequence[Union[str, Path]], n: int = 5) -> str:
    names = [Path(p).name for p in paths]
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


# ------------------------------------------------------------------------------ indexing
#: how LQ and GT images are paired: by file stem, by sorted order (UIR: "the pair is ensured by 'sorted'"), or
#: by name when every stem matches and by sorted order otherwise
PAIRINGS = ("auto", "name", "sorted")


def pair_lqgt(dataroot_lq: Union[str, Path], dataroot_gt: Union[str, Path], degradation: str = "",
              pairing: str = "auto") -> List[Pair]:
    """Pair ``LQ`` and ``GT`` images.

    ``name`` pairs by file stem (``a.jpg`` with ``a.png``). ``sorted`` pairs the n-th LQ with the n-th GT in sorted
    path order, as UIR's datasets and DA-CLIP's ``generate_captions.py`` do (Rain100H ``rain-001.png`` /
    ``norain-001.png``, RainDrop ``0_rain.png`` / ``0_clean.png``, RESIDE ``0048_0.9_0.2.jpg`` / ``0048.png``).
    ``auto`` pairs by name when every stem matches, else by sorted order when the counts match (one warning shows
    the first pairs whose names differ).

    Raises:
        DatasetError: unequal counts (both folders and counts named), or ``name`` pairing with unmatched stems.
    """
    if pairing not in PAIRINGS:
        raise DatasetError(f"pairing {pairing!r} is not one of {', '.join(PAIRINGS)}")
    lq_images, _ = list_images(dataroot_lq)
    gt_images, _ = list_images(dataroot_gt)
    lq, gt = _by_stem(lq_images, dataroot_lq), _by_stem(gt_images, dataroot_gt)
    if set(lq) == set(gt) and pairing != "sorted":
        return [Pair(lq[s], gt[s], degradation) for s in sorted(lq)]
    unmatched = "; ".join(_unmatched(lq, gt, dataroot_lq, dataroot_gt))
    if pairing == "name":
        raise DatasetError(f"LQ/GT images are paired by file name (pairing: name); {unmatched}; use pairing: sorted "
                           f"(UIR's convention) to pair them by sorted order")
    if len(lq_images) != len(gt_images):
        by_name = f"; by name, {unmatched}" if set(lq) & set(gt) else ""
        raise DatasetError(f"{dataroot_lq} has {len(lq_images)} LQ images and {dataroot_gt} has {len(gt_images)} GT "
                           f"images; pairing needs the same number in both{by_name}")
    pairs = [Pair(a, b, degradation) for a, b in zip(sorted(lq_images), sorted(gt_images))]
    if pairing == "auto":
        differ = [f"{p.lq.name} ~ {p.gt.name}" for p in pairs if p.lq.stem != p.gt.stem]
        logger.warning("%s: LQ and GT names differ, so they are paired by sorted order as UIR does (pairing: "
                       "sorted); check the first pairs: %s", Path(dataroot_lq).parent, ", ".join(differ[:3]))
    return pairs


def _unmatched(lq: Dict[str, Path], gt: Dict[str, Path], dataroot_lq: Any, dataroot_gt: Any) -> List[str]:
    """What pairing by name leaves without a partner, on each side."""
    no_gt, no_lq = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
    parts = []
    if no_gt:
        parts.append(f"{len(no_gt)} LQ images without a GT partner in {dataroot_gt}: {_names([lq[s] for s in no_gt])}")
    if no_lq:
        parts.append(f"{len(no_lq)} GT images without an LQ partner in {dataroot_lq}: {_names([gt[s] for s in no_lq])}")
    return parts


def _by_stem(images: List[Path], folder: Union[str, Path]) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for p in images:
        if p.stem in out:
            raise DatasetError(f"{folder}: two images share the name {p.stem!r} ({out[p.stem].name}, {p.name})")
        out[p.stem] = p
    return out


def pair_md(dataroot: Union[str, Path], distortions: Sequence[str], pairing: str = "auto") -> List[Pair]:
    """UIR multi-degradation tree ``dataroot/<degradation>/{LQ,GT}/``; samples carry their degradation."""
    root = Path(dataroot)
    if not root.is_dir():
        raise FileNotFoundError(f"MD dataroot {root} does not exist")
    missing = [d for d in distortions if not (root / d / "LQ").is_dir() or not (root / d / "GT").is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"MD dataroot {root} lacks <degradation>/LQ and /GT folders for: {', '.join(missing)} "
            f"(folders present: {', '.join(present) or 'none'})"
        )
    pairs: List[Pair] = []
    for d in distortions:
        pairs.extend(pair_lqgt(root / d / "LQ", root / d / "GT", degradation=d, pairing=pairing))
    return pairs


def _csv_image(path: Path, filepath: str, root: Optional[Path]) -> Tuple[Optional[Path], List[Path]]:
    """Where a CSV row's image is: absolute as it is; else relative to ``root`` (the block's ``root:``), the CSV's
    folder, then the working directory (DA-CLIP's ``generate_captions.py`` writes paths relative to where it ran
    and saves the CSV in ``datasets/universal/``). Returns the first that exists (``None`` if none does) and every
    location tried."""
    image = Path(filepath)
    tried = [image] if image.is_absolute() else \
        [base / image for base in ([root] if root is not None else []) + [path.parent, Path.cwd()]]
    return next((p for p in tried if p.is_file()), None), tried


def read_daclip_csv(path: Union[str, Path], root: Optional[Union[str, Path]] = None) -> List[Captioned]:
    """DA-CLIP CSV: tab-separated ``filepath`` and ``title`` = ``"<caption>: <degradation>"``.

    Relative file paths resolve against ``root`` when given, else the CSV's folder, else the working directory
    (:func:`_csv_image`; docs/data.md).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DA-CLIP CSV {path} does not exist")
    rows: List[Captioned] = []
    missing: List[Tuple[str, List[Path]]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames is None or not {"filepath", "title"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected a tab-separated header 'filepath<TAB>title', got {reader.fieldnames}")
        for row_number, row in enumerate(reader, start=2):
            title = row["title"] or ""
            if title.count(": ") != 1:
                raise DatasetError(
                    f"{path}: row {row_number}: title {title!r} must hold exactly one ': ' separating "
                    f"caption and degradation (e.g. 'a cat on a sofa: noisy')"
                )
            caption, degradation = title.split(": ")
            image, tried = _csv_image(path, row["filepath"], Path(root) if root is not None else None)
            if image is None:
                missing.append((row["filepath"], tried))
            rows.append(Captioned(image or tried[0], caption.strip(), degradation.strip()))
    if not rows:
        raise DatasetError(f"{path}: the CSV has a header but no rows")
    if missing:
        first, tried = missing[0]
        raise DatasetError(f"{path}: {len(missing)} listed images do not exist; the first, {first}, was looked for "
                           f"at {', '.join(str(p) for p in tried)}; set root: in the dataset block to the folder the "
                           f"paths are relative to")
    return rows


def read_caption_folder(folder: Union[str, Path]) -> List[Captioned]:
    """``img.png`` + ``img.txt`` pairs; all lines of a caption are joined with spaces."""
    folder = Path(folder)
    images, others = list_images(folder, strict=False)
    stray = [p for p in others if p.suffix.lower() != ".txt"]
    if stray:
        raise DatasetError(f"caption folder {folder} holds files that are neither images nor .txt: {_names(stray)}")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise DatasetError(f"caption folder {folder}: no caption (.txt with the same name) for {_names(missing)}")
    items = []
    for p in images:
        caption = " ".join(line.strip() for line in p.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
                           if line.strip())
        items.append(Captioned(p, caption))
    return items


# ------------------------------------------------------------------------------ tensors
def clip_batch(images: torch.Tensor, size: Union[int, Tuple[int, int]] = 224) -> torch.Tensor:
    """CLIP-ready batch from ``(B, 3, H, W)`` in ``[0, 1]`` on any device: bicubic (antialiased) resize until
    the image covers ``size`` (an int: the short side), centre crop to ``size``, OpenAI mean/std. Pass the
    model's input size (``DaCLIP.image_size``)."""
    _, _, h, w = images.shape
    th, tw = (size, size) if isinstance(size, int) else size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    x = x[:, :, top:top + th, left:left + tw].clamp(0, 1)
    mean = OPENAI_MEAN.to(device=x.device, dtype=x.dtype)
    std = OPENAI_STD.to(device=x.device, dtype=x.dtype)
    return (x - mean) / std


def crop_grid(length: int, crop: int, max_crops: int) -> List[int]:
    """Start offsets of ``min(max_crops, ceil(length / crop))`` crops of ``crop`` evenly spread over ``length``."""
    n = min(max_crops, -(-length // crop))
    return [0] if n <= 1 else [round(i * (length - crop) / (n - 1)) for i in range(n)]


def view_side(size: Union[int, Tuple[int, int]], crop: Optional[int] = None) -> int:
    """The crop side of DA-CLIP's view: ``crop``, else the short side of the model's input ``size``."""
    return int(crop or (size if isinstance(size, int) else min(size)))


def clip_crops(images: torch.Tensor, size: Union[int, Tuple[int, int]] = 224, crop: Optional[int] = None,
               max_per_side: int = 3) -> Tuple[torch.Tensor, int]:
    """DA-CLIP's view of an image at the scale it was trained on: ``crop``-pixel squares cut at native resolution,
    up to ``max_per_side`` per side evenly spread over the image, each made CLIP-ready by :func:`clip_batch`.
    Returns ``((B * K, 3, size, size), K)``, the K crops of each image together; an image whose short side is at
    most ``crop`` gives one view, :func:`clip_batch` of the whole image."""
    _, _, h, w = images.shape
    crop = view_side(size, crop)
    if min(h, w) <= crop:
        return clip_batch(images, size), 1
    tops, lefts = crop_grid(h, crop, max_per_side), crop_grid(w, crop, max_per_side)
    views = torch.stack([images[:, :, t:t + crop, l:l + crop] for t in tops for l in lefts], dim=1)
    k = views.shape[1]
    return clip_batch(views.flatten(0, 1), size), k


def degradation_embeddings(daclip: Any, images: torch.Tensor, crop: Optional[int] = None,
                           max_per_side: int = 3) -> torch.Tensor:
    """DA-CLIP's degradation embeddings ``(B, D)`` of images ``(B, 3, H, W)`` in ``[0, 1]`` at the scale it was trained
    on: the mean over the :func:`clip_crops` views (``crop`` pixels at native resolution, default the model's input
    size). A whole 4000-px photograph shrunk to 224 px shows DA-CLIP a thumbnail whose noise, blocks and streaks
    are gone (docs/benchmarks.md#da-clips-view-of-large-images)."""
    param = next(daclip.parameters())
    views, k = clip_crops(images.to(param.device), daclip.image_size, crop, max_per_side)
    _, degradation = daclip.encode_image(views.to(param.dtype), control=True)
    return degradation.unflatten(0, (images.shape[0], k)).mean(dim=1)


def clip_tensor(image: torch.Tensor, size: Union[int, Tuple[int, int]] = 224) -> torch.Tensor:
    """CLIP-ready tensor from ``(3, H, W)`` in ``[0, 1]``: bicubic resize, centre crop, OpenAI mean/std."""
    return clip_batch(image[None], size)[0]


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def _random_int(high: int) -> int:
    return int(torch.randint(0, high, (1,)).item()) if high > 0 else 0


class _Augment:
    """Identical random crop / flip / rotation for a list of same-sized images."""

    def __init__(self, patch_size: Optional[int], use_flip: bool, use_rot: bool, small_images: str,
                 crop: str = "random"):
        self.patch_size, self.use_flip, self.use_rot, self.small = patch_size, use_flip, use_rot, small_images
        self.crop = crop

    def __call__(self, images: List[np.ndarray], where: str) -> List[np.ndarray]:
        if self.patch_size:
            images = [self._fit(im, where) for im in images]
            h, w = images[0].shape[:2]
            if self.crop == "center":
                top, left = (h - self.patch_size) // 2, (w - self.patch_size) // 2
            else:
                top, left = _random_int(h - self.patch_size + 1), _random_int(w - self.patch_size + 1)
            images = [im[top:top + self.patch_size, left:left + self.patch_size] for im in images]
        if self.use_flip and _random_int(2):
            images = [im[:, ::-1] for im in images]
        if self.use_rot:
            if _random_int(2):
                images = [im[::-1] for im in images]
            if _random_int(2):
                images = [im.transpose(1, 0, 2) for im in images]
        return images

    def _fit(self, im: np.ndarray, where: str) -> np.ndarray:
        h, w = im.shape[:2]
        p = self.patch_size
        if h >= p and w >= p:
            return im
        if self.small == "reject":
            raise DatasetError(f"{where} is {w}x{h}, smaller than patch_size {p}; set small_images: pad or use "
                               f"a smaller patch_size")
        return np.pad(im, ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")


class _SkippingDataset(Dataset):
    """Shared corrupt-image policy: ``error`` raises with the path, ``skip`` warns and takes the next item."""

    on_corrupt = "error"

    def __getitem__(self, index: int) -> Dict[str, object]:
        n = len(self)
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                return self._load(i)
            except ImageError as e:
                if self.on_corrupt != "skip":
                    raise
                logger.warning("skipping corrupt image: %s", e)
        raise DatasetError("every image of the dataset failed to load")

    def _load(self, index: int) -> Dict[str, object]:
        raise NotImplementedError


class RestorationDataset(_SkippingDataset):
    """Paired LQ/GT samples with identical augmentation, plus the CLIP-ready LQ.

    ``scale``: super-resolution pairs, the LQ ``scale`` times smaller than its GT; it is upsampled (bicubic) to the
    GT's size before the aligned crop, as SD restorers feed their UNet. A pair whose ``lq`` is ``None`` is made
    from its GT: the GT (cropped first) degraded by :func:`~daclip_lora.data.degrade.degrade` with the pair's
    degradation, seeded by ``(seed, index)``."""

    def __init__(self, pairs: List[Pair], patch_size: Optional[int] = None, use_flip: bool = False,
                 use_rot: bool = False, small_images: str = "pad", on_corrupt: str = "error",
                 clip_size: Union[int, Tuple[int, int]] = 224, crop: str = "random", scale: Optional[int] = None,
                 seed: int = 0):
        if not pairs:
            raise DatasetError("the restoration dataset is empty")
        self.pairs, self.on_corrupt, self.clip_size = pairs, on_corrupt, clip_size
        self.scale, self.seed = scale, seed
        self.augment = _Augment(patch_size, use_flip, use_rot, small_images, crop)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> Dict[str, object]:
        pair = self.pairs[index]
        gt = read_image(pair.gt)
        if pair.lq is None:
            from .degrade import degrade

            (gt,) = self.augment([gt], str(pair.gt))
            lq = degrade(np.ascontiguousarray(gt), pair.degradation, seed=[self.seed, index]).astype(np.float32)
        else:
            lq, gt = self.augment([self._at_gt_size(read_image(pair.lq), gt, pair), gt], str(pair.lq))
        lq_t = _to_tensor(lq)
        return {"LQ": lq_t, "GT": _to_tensor(gt), "LQ_clip": clip_tensor(lq_t, self.clip_size),
                "degradation": pair.degradation, "LQ_path": str(pair.lq or pair.gt), "GT_path": str(pair.gt)}

    def _at_gt_size(self, lq: np.ndarray, gt: np.ndarray, pair: Pair) -> np.ndarray:
        """The LQ at its GT's size: as it is, or upsampled ``scale`` times (super-resolution pairs)."""
        (h, w), (gh, gw) = lq.shape[:2], gt.shape[:2]
        if (h, w) == (gh, gw):
            return lq
        if self.scale and (h * self.scale, w * self.scale) == (gh, gw):
            up = F.interpolate(_to_tensor(lq)[None], size=(gh, gw), mode="bicubic", align_corners=False)
            return up[0].clamp(0, 1).permute(1, 2, 0).numpy()
        fix = (f"with scale: {self.scale} it must be {gw // self.scale}x{gh // self.scale}" if self.scale else
               "for super-resolution pairs set scale: N in the dataset block (the LQ is upsampled to the GT's size)")
        raise DatasetError(f"LQ {pair.lq} is {w}x{h} but GT {pair.gt} is {gw}x{gh}; {fix}")


class CaptionedDataset(_SkippingDataset):
    """Images with a caption (and a degradation word for DA-CLIP CSVs)."""

    def __init__(self, items: List[Captioned], patch_size: Optional[int] = None, use_flip: bool = False,
                 small_images: str = "pad", on_corrupt: str = "error", clip_size: Union[int, Tuple[int, int]] = 224):
        if not items:
            raise DatasetError("the captioned dataset is empty")
        self.items, self.on_corrupt, self.clip_size = items, on_corrupt, clip_size
        self.augment = _Augment(patch_size, use_flip, False, small_images)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> Dict[str, object]:
        item = self.items[index]
        (img,) = self.augment([read_image(item.image)], str(item.image))
        t = _to_tensor(img)
        return {"image": t, "image_clip": clip_tensor(t, self.clip_size), "caption": item.caption,
                "degradation": item.degradation, "path": str(item.image)}


def block_pairs(ds, distortion: Optional[Sequence[str]] = None) -> Optional[List[Pair]]:
    """The LQ/GT pairs of an ``LQGT``, ``MD`` or ``GT`` dataset block (with its ``pairing``); ``None`` for other
    modes."""
    pairing = getattr(ds, "pairing", "auto")
    if ds.mode == "LQGT":
        return pair_lqgt(ds.dataroot_LQ, ds.dataroot_GT, pairing=pairing)
    if ds.mode == "GT":  # clean images only: each under every degradation, degraded when loaded
        images, _ = list_images(ds.dataroot_GT)
        return [Pair(None, p, d) for d in ds.distortion or distortion or () for p in images]
    if ds.mode == "MD":
        return pair_md(ds.dataroot, ds.distortion or distortion or (), pairing=pairing)
    return None


def block_items(ds) -> List[Captioned]:
    """The images of a ``CSV`` (relative paths resolved with the block's ``root``) or ``captions`` block."""
    return read_daclip_csv(ds.csv, getattr(ds, "root", None)) if ds.mode == "CSV" else read_caption_folder(ds.dataroot)


def degradation_groups(ds, labels: Sequence[str]) -> Optional[List[List[int]]]:
    """The indices of each degradation in ``labels`` for an ``MD`` block drawn ``sampling: balanced`` (UIR's
    round-robin over degradations); ``None`` for proportional draws, other modes or a single degradation."""
    if ds.mode not in ("MD", "GT") or getattr(ds, "sampling", "balanced") != "balanced":
        return None
    groups: Dict[str, List[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return list(groups.values()) if len(groups) > 1 else None


def build_dataset(ds, distortion: Optional[Sequence[str]] = None) -> Dataset:
    """A dataset from a :class:`~daclip_lora.training.options.DatasetOptions` block."""
    train = ds.phase == "train"
    patch = ds.patch_size if train else None
    pairs = block_pairs(ds, distortion)
    if pairs is not None:
        return RestorationDataset(pairs, patch, ds.use_flip and train, ds.use_rot and train, ds.small_images,
                                  ds.on_corrupt, scale=getattr(ds, "scale", None))
    return CaptionedDataset(block_items(ds), patch, ds.use_flip and train, ds.small_images, ds.on_corrupt)
