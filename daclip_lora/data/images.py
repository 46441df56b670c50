"""Image reading/writing for restoration data: any common format in, float32 RGB in [0, 1] out."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "ImageTooLarge", "SourceProperties", "list_images", "read_image",
           "read_properties", "write_image", "to_uint8", "MAX_PIXELS"]

#: Images with more pixels are refused *before* decoding (a 1-GB decode from a 50-kB file is a classic
#: decompression bomb). Change it for the process (``daclip_lora.data.images.MAX_PIXELS = ...``) or per call.
MAX_PIXELS = 16384 * 16384

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class ImageError(ValueError):
    """An image file is missing, corrupt, or not an image."""


class ImageTooLarge(ImageError):
    """An image has more pixels than allowed (found from its header, before decoding)."""

    def __init__(self, message: str, width: int, height: int, limit: int):
        super().__init__(message)
        self.width, self.height, self.limit = width, height, limit


def read_image(path: Union[str, Path], max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image as ``float32`` RGB ``(H, W, 3)`` in ``[0, 1]``.

    Grayscale and 1-bit images are replicated to three channels, RGBA/LA/palette images lose their
    alpha channel, 16-bit grayscale is scaled by 65535 (16-bit RGB PNGs are decoded to 8 bits by
    Pillow, correctly scaled), CMYK is converted to RGB.

    Args:
        max_pixels: refuse larger images before decoding them (default :data:`MAX_PIXELS`).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file is corrupt, not an image, or larger than ``max_pixels``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's bomb check and its warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with opened as im:
            w, h = im.size
            if w * h > limit:
                raise ImageTooLarge(f"{path}: {w}x{h} image has {w * h} pixels, above the limit of {limit}; refused "
                                    f"before decoding (raise daclip_lora.data.images.MAX_PIXELS if it is genuine)",
                                    w, h, limit)
            if w < 1 or h < 1:
                raise ImageError(f"{path}: empty image ({w}x{h})")
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split())  # one line
        raise ImageError(f"{path}: cannot read image (corrupt or not an image): {reason}") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def image_size(path: Union[str, Path]) -> Tuple[int, int]:
    """``(height, width)`` of an image file from its header (nothing is decoded).

    Raises:
        ImageError: the file is not an image Pillow can open.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read image (corrupt or not an image): {' '.join(str(e).split())}") from None
    return h, w


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


#: JPEG quality of written JPEGs that have no source to match (Pillow's own default, 75, is visibly lossy)
DEFAULT_JPEG_QUALITY = 95
_ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")


@dataclass
class SourceProperties:
    """What an output written from an image keeps of it: its alpha channel (uint8 ``(H, W)``, ``None`` when
    opaque) and, for a JPEG, its quantisation tables and chroma subsampling (so the output is encoded at the
    input's quality, as Pillow's ``quality="keep"`` does for an image it decoded itself)."""

    alpha: Optional[np.ndarray] = None
    jpeg_qtables: Optional[Dict[int, Any]] = None
    jpeg_subsampling: Optional[int] = None


def read_properties(path: Union[str, Path]) -> SourceProperties:
    """The :class:`SourceProperties` of an image file (read after :func:`read_image` accepted it)."""
    with Image.open(path) as im:
        props = SourceProperties()
        if im.format == "JPEG":
            from PIL import JpegImagePlugin

            props.jpeg_qtables = dict(im.quantization) or None
            props.jpeg_subsampling = JpegImagePlugin.get_sampling(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            alpha = np.asarray(im.convert("RGBA"))[:, :, 3]
            props.alpha = None if alpha.min() == 255 else alpha.copy()
        return props


def _save_options(path: Path, keep: Optional[SourceProperties], jpeg_quality: Optional[int]) -> Dict[str, Any]:
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return {}
    if jpeg_quality is not None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
        return {"quality": int(jpeg_quality)}
    if keep is not None and keep.jpeg_qtables:
        return {"qtables": keep.jpeg_qtables, "subsampling": keep.jpeg_subsampling}
    return {"quality": DEFAULT_JPEG_QUALITY}


def write_image(path: Union[str, Path], img: np.ndarray, keep: Optional[SourceProperties] = None,
                jpeg_quality: Optional[int] = None) -> Path:
    """Write a float ``[0, 1]`` (or uint8) RGB image; the format follows the suffix (PNG by default).

    Args:
        keep: properties of the image this one was made from (:func:`read_properties`): its alpha channel is
            carried over unchanged (formats with alpha: PNG, WebP, TIFF) and a JPEG is encoded with its
            quantisation tables (the input's quality).
        jpeg_quality: encode a JPEG at this quality (1-100) instead; default: the source's tables, else
            :data:`DEFAULT_JPEG_QUALITY`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = img if img.dtype == np.uint8 else to_uint8(img)
    alpha = keep.alpha if keep is not None else None
    if alpha is not None and alpha.shape == data.shape[:2] and path.suffix.lower() in _ALPHA_SUFFIXES:
        data = np.concatenate([data, alpha[:, :, None]], axis=2)
    Image.fromarray(data).save(path, **_save_options(path, keep, jpeg_quality))
    return path


def list_images(folder: Union[str, Path], strict: bool = True) -> Tuple[List[Path], List[Path]]:
    """``(images, others)`` in ``folder`` (sorted by name); hidden files are skipped.

    Raises:
        FileNotFoundError: the folder does not exist.
        ImageError: the folder has no images, or (``strict``) holds non-image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        raise ImageError(f"image folder {folder} is empty (no {', '.join(IMAGE_EXTENSIONS)} files)")
    if strict and others:
        names = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise ImageError(f"image folder {folder} holds {len(others)} non-image files: {names}")
    return images, others
