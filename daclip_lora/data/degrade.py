"""Deterministic synthetic degradations named like DA-CLIP's ten degradation types.

Every generator is a plain function ``f(img, rng, **params) -> img`` on float32 RGB images in
``[0, 1]``; with the same ``rng`` seed it returns the same image. :func:`degrade` dispatches by the
DA-CLIP name. The parameters are drawn from ``rng`` when not given, in ranges similar to the
degradations of the DA-CLIP training data. These are *synthetic stand-ins* (e.g. haze uses a
synthetic depth map, raindrops are blurred discs): good for demos, tests and pre-training checks,
not a substitute for the real datasets.
"""

from __future__ import annotations

import io
from typing import Callable, Dict, Optional, Union

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["DEGRADATIONS", "DEGRADATION_FUNCTIONS", "degrade", "noisy", "motion_blurry", "jpeg_compressed", "low_light",
           "hazy", "rainy", "raindrop", "shadowed", "snowy", "uncompleted"]

Rng = np.random.Generator


def _rng(rng: Union[Rng, int, None]) -> Rng:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    size = max(3, int(length) | 1)
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    t = np.deg2rad(angle)
    for s in np.linspace(-c, c, 4 * size):
        kernel[int(round(c + s * np.sin(t))), int(round(c + s * np.cos(t)))] = 1.0
    return kernel / kernel.sum()


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(img[..., ch], kernel, mode="reflect") for ch in range(img.shape[2])], -1)


def noisy(img: np.ndarray, rng: Union[Rng, int, None] = None, sigma: Optional[float] = None) -> np.ndarray:
    """Additive white Gaussian noise; ``sigma`` on the 0-255 scale (default 15-50)."""
    rng = _rng(rng)
    sigma = rng.uniform(15, 50) if sigma is None else sigma
    return np.clip(img + rng.normal(0.0, sigma / 255.0, img.shape), 0, 1).astype(np.float32)


def motion_blurry(img: np.ndarray, rng: Union[Rng, int, None] = None, length: Optional[int] = None,
                  angle: Optional[float] = None) -> np.ndarray:
    """Linear motion blur of ``length`` pixels (default 9-21) at ``angle`` degrees."""
    rng = _rng(rng)
    length = int(rng.integers(9, 22)) if length is None else length
    angle = rng.uniform(0, 180) if angle is None else angle
    return np.clip(_convolve(img, _motion_kernel(length, angle)), 0, 1).astype(np.float32)


def jpeg_compressed(img: np.ndarray, rng: Union[Rng, int, None] = None, quality: Optional[int] = None) -> np.ndarray:
    """JPEG round trip at ``quality`` (default 10-30)."""
    rng = _rng(rng)
    quality = int(rng.integers(10, 31)) if quality is None else quality
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def low_light(img: np.ndarray, rng: Union[Rng, int, None] = None, gamma: Optional[float] = None,
              scale: Optional[float] = None, sigma: float = 3.0) -> np.ndarray:
    """Darkening: ``scale * img ** gamma`` (defaults 1.5-3 and 0.1-0.3) plus faint sensor noise."""
    rng = _rng(rng)
    gamma = rng.uniform(1.5, 3.0) if gamma is None else gamma
    scale = rng.uniform(0.1, 0.3) if scale is None else scale
    dark = scale * np.power(np.clip(img, 0, 1), gamma)
    return np.clip(dark + rng.normal(0.0, sigma / 255.0, img.shape), 0, 1).astype(np.float32)


def hazy(img: np.ndarray, rng: Union[Rng, int, None] = None, beta: Optional[float] = None,
         airlight: Optional[float] = None) -> np.ndarray:
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-beta d)`` on a smooth synthetic depth."""
    rng = _rng(rng)
    beta = rng.uniform(1.0, 2.5) if beta is None else beta
    airlight = rng.uniform(0.7, 0.95) if airlight is None else airlight
    h, w = img.shape[:2]
    ramp = np.linspace(1.0, 0.3, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    blobs = ndimage.gaussian_filter(rng.random((h, w)).astype(np.float32), sigma=max(h, w) / 8)
    blobs = (blobs - blobs.min()) / (np.ptp(blobs) + 1e-6)
    depth = 0.7 * ramp + 0.3 * blobs
    t = np.exp(-beta * depth)[..., None]
    return np.clip(img * t + airlight * (1 - t), 0, 1).astype(np.float32)


def _streaks(shape, rng: Rng, density: float, length: int, angle: float) -> np.ndarray:
    h, w = shape
    seeds = (rng.random((h, w)) < density).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w))
    return np.clip(ndimage.convolve(seeds, _motion_kernel(length, angle), mode="wrap") * length * 0.6, 0, 1)


def rainy(img: np.ndarray, rng: Union[Rng, int, None] = None, density: Optional[float] = None,
          length: Optional[int] = None, angle: Optional[float] = None) -> np.ndarray:
    """Rain streaks: sparse seeds smeared by a motion kernel, screened over a slightly dimmed image."""
    rng = _rng(rng)
    density = rng.uniform(0.01, 0.03) if density is None else density
    length = int(rng.integers(11, 25)) if length is None else length
    angle = rng.uniform(60, 120) if angle is None else angle
    rain = _streaks(img.shape[:2], rng, density, length, angle)[..., None]
    return np.clip(1 - (1 - 0.9 * img) * (1 - 0.8 * rain), 0, 1).astype(np.float32)


def snowy(img: np.ndarray, rng: Union[Rng, int, None] = None, density: Optional[float] = None) -> np.ndarray:
    """Snow: soft white flakes of two sizes over a faintly veiled image."""
    rng = _rng(rng)
    density = rng.uniform(0.004, 0.012) if density is None else density
    h, w = img.shape[:2]
    flakes = np.zeros((h, w), np.float32)
    for size, frac in ((0.8, 1.0), (1.8, 0.35)):
        seeds = (rng.random((h, w)) < density * frac).astype(np.float32)
        flakes += ndimage.gaussian_filter(seeds, size) * (2 * np.pi * size ** 2)
    flakes = np.clip(flakes, 0, 1)[..., None]
    veiled = 0.85 * img + 0.15
    return np.clip(veiled * (1 - flakes) + flakes, 0, 1).astype(np.float32)


def raindrop(img: np.ndarray, rng: Union[Rng, int, None] = None, count: Optional[int] = None) -> np.ndarray:
    """Raindrops on the lens: soft discs inside which the scene is blurred and brightened."""
    rng = _rng(rng)
    h, w = img.shape[:2]
    count = max(6, int(rng.integers(8, 20) * h * w / 256 ** 2)) if count is None else count
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.04, 0.09) * min(h, w)
        mask = np.maximum(mask, np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1))
    blurred = np.stack([ndimage.gaussian_filter(img[..., c], 4) for c in range(3)], -1)
    drops = np.clip(blurred * 1.1 + 0.08, 0, 1)
    m = mask[..., None]
    return np.clip(img * (1 - m) + drops * m, 0, 1).astype(np.float32)


def shadowed(img: np.ndarray, rng: Union[Rng, int, None] = None, strength: Optional[float] = None) -> np.ndarray:
    """A soft-edged shadow over a random half-plane region, darkened by ``strength`` (0.4-0.7)."""
    rng = _rng(rng)
    strength = rng.uniform(0.4, 0.7) if strength is None else strength
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.2, 0.2) * max(h, w)
    side = (xx - w / 2) * np.cos(t) + (yy - h / 2) * np.sin(t) - offset
    mask = ndimage.gaussian_filter((side > 0).astype(np.float32), max(h, w) / 64)[..., None]
    return np.clip(img * (1 - strength * mask), 0, 1).astype(np.float32)


def uncompleted(img: np.ndarray, rng: Union[Rng, int, None] = None, coverage: Optional[float] = None,
                fill: float = 1.0) -> np.ndarray:
    """Inpainting input: random thick brush strokes set to ``fill`` (white) until ``coverage`` is masked."""
    rng = _rng(rng)
    coverage = rng.uniform(0.1, 0.25) if coverage is None else coverage
    h, w = img.shape[:2]
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    radius = max(2.0, 0.04 * min(h, w))
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    for _ in range(200):
        if mask.mean() >= coverage:
            break
        angle = rng.uniform(0, 2 * np.pi)
        step = rng.uniform(0.1, 0.3) * min(h, w)
        for s in np.linspace(0, step, 6):
            cy, cx = y + s * np.sin(angle), x + s * np.cos(angle)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        y, x = np.clip(y + step * np.sin(angle), 0, h - 1), np.clip(x + step * np.cos(angle), 0, w - 1)
        if rng.random() < 0.2:
            y, x = rng.uniform(0, h), rng.uniform(0, w)
    out = img.copy()
    out[mask] = fill
    return out.astype(np.float32)


DEGRADATION_FUNCTIONS: Dict[str, Callable[..., np.ndarray]] = {
    "motion-blurry": motion_blurry,
    "hazy": hazy,
    "jpeg-compressed": jpeg_compressed,
    "low-light": low_light,
    "noisy": noisy,
    "raindrop": raindrop,
    "rainy": rainy,
    "shadowed": shadowed,
    "snowy": snowy,
    "uncompleted": uncompleted,
}
#: The ten degradation names of DA-CLIP's training set, in its order (the one list of the package).
DEGRADATIONS = tuple(DEGRADATION_FUNCTIONS)


def degrade(img: np.ndarray, name: str, seed: Union[int, Rng, None] = None, **params) -> np.ndarray:
    """Apply the degradation called ``name`` (a DA-CLIP name) deterministically for ``seed``."""
    try:
        fn = DEGRADATION_FUNCTIONS[name]
    except KeyError:
        from .._utils.suggest import suggest

        raise ValueError(
            f"unknown degradation {name!r}; available: {', '.join(DEGRADATION_FUNCTIONS)}."
            f"{suggest(name, DEGRADATION_FUNCTIONS)}"
        ) from None
    return fn(np.asarray(img, dtype=np.float32), _rng(seed), **params)
