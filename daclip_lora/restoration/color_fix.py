"""Colour fix: give a restored image the LQ image's colours, as the SD restorers do after decoding.

Diffusion restorers drift in colour (the VAE and the UNet do not preserve the input's channel statistics), and
every widely used one ships a fix that takes the low frequencies, or the channel statistics, from the LQ image:

* ``wavelet``: the restored image's high frequencies plus the LQ's low frequencies, from a five-level
  à-trous decomposition with the 3x3 binomial kernel (StableSR's ``wavelet_reconstruction``, also in DiffBIR,
  OSEDiff and S3Diff);
* ``adain``: each channel of the restored image normalised to the LQ's mean and standard deviation (adaptive
  instance normalisation, StableSR's ``adain_color_fix``);
* ``auto``: ``wavelet`` except where DA-CLIP reads the LQ's low frequencies as the degradation itself (low light,
  haze, shadow, ... :data:`LOW_FREQUENCY_DEGRADATIONS`), where the LQ's colours are what must *not* come back.

Re-implemented here (about 30 lines) rather than imported: the anchors ship it inside their repositories, not as
a library; the maths follows StableSR's ``colorfix.py`` (kernel, dilations, replicate padding, five levels).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["COLOR_FIXES", "LOW_FREQUENCY_DEGRADATIONS", "adain", "apply_color_fix", "wavelet", "wavelet_decompose"]

COLOR_FIXES = ("none", "wavelet", "adain", "auto")

#: degradations whose LQ colours or large-scale content are the degradation (DA-CLIP's words): ``auto`` leaves
#: the restored image as it is for them. Global tone (low light, haze, shadow) and large or dense occluders
#: (snow, masks, rain streaks, which also brighten the LQ on average); chosen on the demo's val split, where the
#: wavelet fix lowered the PSNR of each of these (docs/restore_and_app.md has the measured table)
LOW_FREQUENCY_DEGRADATIONS = ("low-light", "hazy", "shadowed", "snowy", "uncompleted", "rainy")


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The 3x3 binomial kernel at ``dilation=radius`` with replicate padding, as its two separable passes of
    shifted slices (``[1, 2, 1] / 4`` down, then across): the same sums as the depthwise dilated convolution,
    which PyTorch runs several times slower on CPU (the fusion head runs this on every image)."""
    h, w = x.shape[2:]
    r = radius
    p = F.pad(x, (r,) * 4, mode="replicate")
    v = (p[:, :, :h] + 2 * p[:, :, r:r + h] + p[:, :, 2 * r:2 * r + h]) / 4
    return (v[..., :w] + 2 * v[..., r:r + w] + v[..., 2 * r:2 * r + w]) / 4


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple:
    """``(high, low)`` with ``high + low == x``: ``low`` is ``x`` blurred at dilations 1, 2, ..., 2**(levels-1)."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2 ** i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet(restored: torch.Tensor, lq: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The restored image's high frequencies plus the LQ's low frequencies (``(B, 3, H, W)`` in [0, 1])."""
    return (wavelet_decompose(restored, levels)[0] + wavelet_decompose(lq, levels)[1]).clamp(0, 1)


def adain(restored: torch.Tensor, lq: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel of ``restored`` moved to the LQ's mean and standard deviation."""
    def stats(x: torch.Tensor) -> tuple:
        flat = x.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]

    (mr, sr), (ml, sl) = stats(restored), stats(lq)
    return ((restored - mr) / sr * sl + ml).clamp(0, 1)


def apply_color_fix(restored: torch.Tensor, lq: torch.Tensor, method: str,
                    degradations: Optional[Sequence[str]] = None) -> torch.Tensor:
    """``restored`` with the colour fix ``method`` (:data:`COLOR_FIXES`); ``auto`` needs each image's predicted
    degradation word in ``degradations``.

    Raises:
        ValueError: an unknown method, or ``auto`` without one degradation word per image.
    """
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}; use one of {', '.join(COLOR_FIXES)}")
    if method == "none":
        return restored
    if method == "adain":
        return adain(restored, lq)
    fixed = wavelet(restored, lq)
    if method == "wavelet":
        return fixed
    if degradations is None or len(degradations) != restored.shape[0]:
        raise ValueError("color_fix 'auto' needs DA-CLIP's predicted degradation of every image")
    keep = torch.tensor([d in LOW_FREQUENCY_DEGRADATIONS for d in degradations], device=restored.device)
    return torch.where(keep[:, None, None, None], restored, fixed)
