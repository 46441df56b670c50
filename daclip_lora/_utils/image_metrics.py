"""Full-reference image quality: the one PSNR and SSIM of the package (BasicSR conventions).

``psnr``/``ssim`` take ``(H, W, 3)`` arrays in ``[0, 1]`` (peak 255 after scaling, optional BT.601 luma and border
crop, as BasicSR and UIR report them); :func:`batch_psnr` is the mean per-image PSNR of tensors in ``[0, 1]``
(training logs and recipes); :func:`mse_to_psnr` is the formula both use.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

__all__ = ["batch_psnr", "image_metrics", "mse_to_psnr", "psnr", "ssim"]


def mse_to_psnr(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error at the given peak value (``inf`` for an exact match)."""
    return float("inf") if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def batch_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of two ``(N, C, H, W)`` batches in ``[0, 1]``."""
    mse = ((a.float() - b.float()) ** 2).mean(dim=tuple(range(1, a.ndim))).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image in [0, 1], got shape {img.shape}")
    if y_channel:  # ITU-R BT.601 luma, as BasicSR / UIR compute it
        img = (16.0 + img @ np.array([65.481, 128.553, 24.966])) / 255.0
        img = img[..., None]
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return img * 255.0


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB of two ``(H, W, 3)`` images in ``[0, 1]`` (BasicSR convention, peak 255)."""
    x, y = _prepare(a, crop_border, y_channel), _prepare(b, crop_border, y_channel)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return mse_to_psnr(float(np.mean((x - y) ** 2)), peak=255.0)


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM (Gaussian window, sigma 1.5, as Wang et al. and BasicSR) of two images in ``[0, 1]``."""
    from skimage.metrics import structural_similarity

    x, y = _prepare(a, crop_border, y_channel), _prepare(b, crop_border, y_channel)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return float(structural_similarity(x, y, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, channel_axis=2))


def image_metrics(restored: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> Dict[str, float]:
    """``psnr``, ``ssim`` (RGB) and ``psnr_y``, ``ssim_y`` (luma)."""
    return {"psnr": psnr(restored, gt, crop_border), "ssim": ssim(restored, gt, crop_border),
            "psnr_y": psnr(restored, gt, crop_border, True), "ssim_y": ssim(restored, gt, crop_border, True)}
