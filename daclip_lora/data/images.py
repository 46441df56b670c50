"""Image files in and out: any common format in, float32 RGB in [0, 1] out, upright; outputs written in the
input's format, bit depth, colour profile, EXIF and alpha (:class:`SourceProperties`)."""

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
           "read_photo", "read_properties", "write_image", "to_uint8", "MAX_PIXELS"]

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


#: EXIF orientation tag; the values 2-8 say how the stored pixels must be flipped/rotated to be shown upright
ORIENTATION = 0x0112


def read_image(path: Union[str, Path], max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image as ``float32`` RGB ``(H, W, 3)`` in ``[0, 1]``, upright (:func:`read_photo` without what an
    output keeps of it)."""
    return read_photo(path, max_pixels)[0]


def read_photo(path: Union[str, Path], max_pixels: Optional[int] = None) -> Tuple[np.ndarray, "SourceProperties"]:
    """Read an image as ``float32`` RGB ``(H, W, 3)`` in ``[0, 1]`` and what a restored copy of it keeps.

    The EXIF orientation is applied (the pixels come upright). 16-bit PNG and TIFF samples are kept as floats
    (no 8-bit step); grayscale is replicated to three channels (and marked, so the output is grayscale again);
    palette, CMYK and the other modes are converted to RGB; an alpha channel is returned in the properties,
    not in the pixels (it bypasses the model).

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
        with _open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageTooLarge(f"{path}: {w}x{h} image has {w * h} pixels, above the limit of {limit}; refused "
                                    f"before decoding (raise daclip_lora.data.images.MAX_PIXELS if it is genuine)",
                                    w, h, limit)
            if w < 1 or h < 1:
                raise ImageError(f"{path}: empty image ({w}x{h})")
            samples, props = _decode(path, im)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split())  # one line
        raise ImageError(f"{path}: cannot read image (corrupt or not an image): {reason}") from None
    return _split_alpha(samples, props)


def _open(path: Path) -> Image.Image:
    """``Image.open`` without Pillow's bomb check (:func:`read_photo` applies its own limit from the header)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


#: Pillow modes kept as they are (gray, gray + alpha, RGB, RGBA); every other mode is converted
_KEPT_MODES = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "1": "L", "La": "LA", "RGBa": "RGBA",
               "PA": "RGBA"}


def _decode(path: Path, im: Image.Image) -> Tuple[np.ndarray, "SourceProperties"]:
    """The file's samples, upright, as ``(H, W, C)`` (C = 1 to 4, alpha last) and its properties."""
    from .deep_files import is_16_bit, read_16_bit

    props = _properties(im)
    if is_16_bit(path, im.format):
        samples, props.bit_depth = read_16_bit(path, im.format), 16
    elif im.mode.startswith("I;16") or im.mode == "I":
        samples, props.bit_depth = np.asarray(im, dtype=np.uint16)[:, :, None], 16
    elif im.mode == "F":
        samples = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[:, :, None]
    else:
        mode = _KEPT_MODES.get(im.mode)
        if mode is None:
            transparent = im.mode == "P" and "transparency" in im.info
            mode = "RGBA" if transparent else "RGB"
        samples = np.asarray(im.convert(mode) if mode != im.mode else im)
        samples = samples[:, :, None] if samples.ndim == 2 else samples
        if mode == "RGB" and im.mode not in ("RGB", "P") and props.icc_profile and props.icc_profile[16:20] != b"RGB ":
            props.icc_profile = None  # a CMYK (or Lab) profile does not describe the RGB we made
    props.grayscale = samples.shape[2] < 3
    return _orient(samples, props.orientation), props


def _orient(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to ``(H, W, C)`` samples.

    Written here rather than with ``ImageOps.exif_transpose`` because the samples may be 16-bit RGB, which no
    Pillow image can hold; the eight cases are those of the EXIF standard (and of ``exif_transpose``)."""
    flips = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    fn = flips.get(orientation)
    return np.ascontiguousarray(fn(samples)) if fn else samples


def _split_alpha(samples: np.ndarray, props: "SourceProperties") -> Tuple[np.ndarray, "SourceProperties"]:
    """Float RGB in ``[0, 1]`` (gray replicated) and the alpha channel, unchanged, in the properties."""
    colour, alpha = (samples[:, :, :-1], samples[:, :, -1]) if samples.shape[2] in (2, 4) else (samples, None)
    if alpha is not None and alpha.min() < np.iinfo(alpha.dtype).max:
        props.alpha = alpha.copy()
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(colour.dtype, 1.0)
    rgb = colour.astype(np.float32) / np.float32(scale)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.clip(rgb, 0.0, 1.0), props


def image_size(path: Union[str, Path]) -> Tuple[int, int]:
    """``(height, width)`` of an image file, upright (its EXIF orientation applied), from its header.

    Raises:
        ImageError: the file is not an image Pillow can open.
    """
    try:
        with _open(Path(path)) as im:
            w, h = im.size
            if int(im.getexif().get(ORIENTATION, 1) or 1) in (5, 6, 7, 8):  # stored rotated by 90 degrees
                w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read image (corrupt or not an image): {' '.join(str(e).split())}") from None
    return h, w


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


#: JPEG quality of written JPEGs that have no source to match (Pillow's own default, 75, is visibly lossy)
DEFAULT_JPEG_QUALITY = 95
#: output formats by suffix: Pillow's format name, and whether it holds alpha and 16 bits
FORMATS = {".png": ("PNG", True, True), ".tif": ("TIFF", True, True), ".tiff": ("TIFF", True, True),
           ".jpg": ("JPEG", False, False), ".jpeg": ("JPEG", False, False), ".webp": ("WEBP", True, False),
           ".bmp": ("BMP", False, False), ".ppm": ("PPM", False, False)}


@dataclass
class SourceProperties:
    """What an output written from an image keeps of it (:func:`read_photo`): its bit depth, whether it was
    grayscale, its alpha channel (``(H, W)`` in the file's own depth, upright; ``None`` when opaque), its ICC
    profile and EXIF (with the orientation reset to 1: the pixels are stored upright), and for a JPEG its
    quantisation tables and chroma subsampling (so the output is encoded at the input's quality, as Pillow's
    ``quality="keep"`` does for an image it decoded itself)."""

    bit_depth: int = 8
    grayscale: bool = False
    alpha: Optional[np.ndarray] = None
    icc_profile: Optional[bytes] = None
    exif: Optional[bytes] = None
    orientation: int = 1
    jpeg_qtables: Optional[Dict[int, Any]] = None
    jpeg_subsampling: Optional[int] = None


def read_properties(path: Union[str, Path]) -> SourceProperties:
    """The :class:`SourceProperties` of an image file (:func:`read_photo`'s second value)."""
    return read_photo(path)[1]


def _properties(im: Image.Image) -> SourceProperties:
    props = SourceProperties(icc_profile=im.info.get("icc_profile") or None)
    exif = im.getexif()
    props.orientation = int(exif.get(ORIENTATION, 1) or 1)
    if im.format in ("JPEG", "PNG", "WEBP") and len(exif):
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        props.exif = exif.tobytes()
    if im.format == "JPEG":
        from PIL import JpegImagePlugin

        props.jpeg_qtables = dict(im.quantization) or None
        props.jpeg_subsampling = JpegImagePlugin.get_sampling(im)
    return props


def _save_options(fmt: str, keep: SourceProperties, quality: Optional[int]) -> Dict[str, Any]:
    """Pillow's ``save`` options: the source's ICC profile and EXIF, and the encoding of JPEG and WebP."""
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    options: Dict[str, Any] = {}
    if keep.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["icc_profile"] = keep.icc_profile
    if keep.exif and fmt in ("PNG", "JPEG", "WEBP"):
        options["exif"] = keep.exif
    if fmt == "JPEG":
        if quality is None and keep.jpeg_qtables:
            options.update(qtables=keep.jpeg_qtables, subsampling=keep.jpeg_subsampling)
        else:
            options["quality"] = quality or DEFAULT_JPEG_QUALITY
    elif fmt == "WEBP":  # lossless unless a quality is asked for
        options.update({"lossless": True, "quality": 100} if quality is None else {"quality": quality})
    elif fmt == "TIFF":
        options["compression"] = "tiff_deflate"
    return options


def _samples(img: np.ndarray, keep: SourceProperties, depth: int, has_alpha: bool) -> np.ndarray:
    """``(H, W, C)`` integer samples of ``depth`` bits: gray when the source was, its alpha put back."""
    rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img, 0.0, 1.0)
    colour = rgb @ np.array([0.299, 0.587, 0.114], np.float32) if keep.grayscale else rgb  # ITU-R 601, as Pillow
    maximum = 65535 if depth == 16 else 255
    data = (colour * maximum + 0.5).astype(np.uint16 if depth == 16 else np.uint8)
    data = data[:, :, None] if data.ndim == 2 else data
    alpha = keep.alpha
    if has_alpha and alpha is not None and alpha.shape == data.shape[:2]:
        if alpha.dtype != data.dtype:  # 8 <-> 16 bits: 255 * 257 = 65535
            alpha = (alpha.astype(np.uint32) * 257).astype(np.uint16) if depth == 16 else (alpha // 257).astype(
                np.uint8)
        data = np.concatenate([data, alpha[:, :, None]], axis=2)
    elif alpha is not None:
        logger.warning("the alpha channel is dropped: the output format has none (PNG, TIFF and WebP do)")
    return data


def write_image(path: Union[str, Path], img: np.ndarray, keep: Optional[SourceProperties] = None,
                quality: Optional[int] = None) -> Path:
    """Write a float ``[0, 1]`` (or uint8) RGB image atomically (a temporary file, then a rename); the format
    follows the suffix.

    Args:
        keep: properties of the image this one was made from (:func:`read_photo`): its bit depth (16-bit PNG and
            TIFF stay 16-bit), grayscale, alpha channel (put back unchanged in PNG, WebP and TIFF), ICC profile
            and EXIF are carried over, and a JPEG is encoded with its quantisation tables (the input's quality).
        quality: encode a JPEG, or a lossy WebP, at this quality (1-100) instead; by default a JPEG gets the
            source's tables, else :data:`DEFAULT_JPEG_QUALITY`, and a WebP is lossless.
    """
    from .._utils.io import atomic_file
    from .deep_files import write_16_bit

    path = Path(path)
    fmt, has_alpha, deep = FORMATS.get(path.suffix.lower(), ("PNG", True, True))
    keep = keep or SourceProperties()
    data = _samples(img, keep, 16 if deep and keep.bit_depth == 16 else 8, has_alpha)
    options = _save_options(fmt, keep, quality)
    with atomic_file(path) as tmp:
        if data.dtype == np.uint16:
            write_16_bit(tmp, fmt, data, options.get("icc_profile"), keep.exif)
        else:
            Image.fromarray(data[:, :, 0] if data.shape[2] == 1 else data).save(tmp, format=fmt, **options)
    return path


def _files(folder: Path, recursive: bool, exclude: Optional[Union[str, Path]]) -> List[Path]:
    """The files under ``folder``, sorted, without hidden ones and those under ``exclude``."""
    skip = Path(exclude).resolve() if exclude is not None else None
    out = []
    for p in folder.rglob("*") if recursive else folder.iterdir():
        hidden = any(part.startswith(".") for part in p.relative_to(folder).parts)
        if p.is_file() and not hidden and not (skip is not None and p.resolve().is_relative_to(skip)):
            out.append(p)
    return sorted(out)


def list_images(folder: Union[str, Path], strict: bool = True, recursive: bool = False,
                exclude: Optional[Union[str, Path]] = None) -> Tuple[List[Path], List[Path]]:
    """``(images, others)`` in ``folder`` (sorted by path); hidden files and folders are skipped.

    Args:
        recursive: also every sub-folder's files.
        exclude: a folder whose files are left out (an output folder inside the input one).

    Raises:
        FileNotFoundError: the folder does not exist.
        ImageError: the folder has no images, or (``strict``) holds non-image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = _files(folder, recursive, exclude)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        raise ImageError(f"image folder {folder} is empty (no {', '.join(IMAGE_EXTENSIONS)} files)")
    if strict and others:
        names = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise ImageError(f"image folder {folder} holds {len(others)} non-image files: {names}")
    return images, others
