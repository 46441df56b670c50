"""16-bit PNG and TIFF files, which Pillow cannot hold: it decodes a 16-bit RGB(A) PNG or TIFF to 8 bits and
writes no 48-bit RGB. PNGs go through pypng (pure Python, the reference PNG codec in Python) and TIFFs through
tifffile (scikit-image's own TIFF codec); both return and take ``uint16`` arrays ``(H, W, C)``, C = 1 to 4 (gray,
gray + alpha, RGB, RGBA).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["is_16_bit", "read_16_bit", "write_16_bit"]


def is_16_bit(path: Path, fmt: Optional[str]) -> bool:
    """Whether a PNG or TIFF file stores 16 bits per sample (read from its header)."""
    if fmt == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return len(header) == 25 and header[24] == 16  # the IHDR's bit depth
    if fmt == "TIFF":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.bitspersample == 16 and page.dtype == np.uint16
    return False


def read_16_bit(path: Path, fmt: str) -> np.ndarray:
    """The samples of a 16-bit PNG or TIFF as ``uint16`` ``(H, W, C)`` (palette and transparency expanded)."""
    if fmt == "PNG":
        import png

        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
        return arr.reshape(height, width, info["planes"])
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
    return arr[:, :, None] if arr.ndim == 2 else arr


def write_16_bit(path: Path, fmt: str, data: np.ndarray, icc_profile: Optional[bytes] = None,
                 exif: Optional[bytes] = None) -> None:
    """Write ``uint16`` ``(H, W, C)`` as a 16-bit PNG (``iCCP`` and ``eXIf`` chunks) or TIFF (ICC profile tag)."""
    height, width, channels = data.shape
    if fmt == "PNG":
        import png

        buffer = io.BytesIO()
        png.Writer(width, height, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16).write(
            buffer, data.reshape(height, width * channels))
        chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
        extra = []
        if icc_profile:
            extra.append((b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile)))
        if exif:
            extra.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
        with open(path, "wb") as f:
            png.write_chunks(f, chunks[:1] + extra + chunks[1:])  # after IHDR, before the image data
        return
    import tifffile

    photometric = "minisblack" if channels < 3 else "rgb"
    tifffile.imwrite(path, data if channels > 1 else data[:, :, 0], photometric=photometric,
                     extrasamples=["unassalpha"] if channels in (2, 4) else None, iccprofile=icc_profile,
                     compression="zlib")
