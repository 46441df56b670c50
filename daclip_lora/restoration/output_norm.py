"""Degradation-aware output norm: the UNet's last normalisation (``conv_norm_out``) scaled and shifted per channel
and per image from DA-CLIP's degradation embedding and the statistics the normalisation removes.

Why. A GroupNorm with as many groups as channels (the tiny bases, and any UNet whose last level has few channels
per group) is an instance norm: it removes every channel's mean and scale per image, so ``conv_out`` cannot
produce an image-dependent global offset or gain. One-step restoration of haze, low light or shadows is mostly
that (the output is ``x0 = z_LQ - k · eps``: a global colour or brightness change needs a global ``eps``), and
the time embedding cannot carry it either (each ResBlock's second norm removes it again). Here the norm's output
becomes ``GN(h) · (1 + s) + b``, with ``(s, b) = MLP([LN(e), mean_c(h), log std_c(h)])``: the degradation
embedding ``e`` says what to correct, the pre-norm per-channel statistics of ``h`` say how much. The MLP's last
layer starts at zero (step 0 is exactly the base model); ``keep`` (the last column of the labels) switches it off
per sample for condition dropout and the unconditional branch of guidance. The same idea as AdaGN / adaLN
(Dhariwal & Nichol 2021; Peebles & Xie 2023), here with the statistics fed back in.

The module replaces ``unet.conv_norm_out`` (so the UNet stays a stock ``UNet2DConditionModel``) and reads the
per-sample ``class_labels`` ``[e, keep]`` of each UNet call through a forward pre-hook on the UNet.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

__all__ = ["DegradationOutputNorm"]


class DegradationOutputNorm(nn.Module):
    """``norm(h) · (1 + s) + b`` with per-image, per-channel ``s, b`` from the degradation embedding and ``h``'s
    statistics.

    Args:
        norm: the UNet's ``conv_norm_out`` (kept, frozen with the UNet).
        embed_dim: DA-CLIP's embedding width.
        hidden: width of the MLP.
    """

    def __init__(self, norm: nn.GroupNorm, embed_dim: int, hidden: int = 64):
        super().__init__()
        channels = norm.num_channels
        self.norm = norm
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.linear_1 = nn.Linear(embed_dim + 2 * channels, hidden)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)
        self.num_channels = channels  # diffusers reads conv_norm_out.num_channels in places
        self._labels: Optional[torch.Tensor] = None
        self._handle: Any = None

    def attach(self, unet: nn.Module) -> None:
        """Read each UNet call's ``class_labels`` (call once, after installing this as ``unet.conv_norm_out``)."""
        if self._handle is None:
            self._handle = unet.register_forward_pre_hook(self._unet_hook, with_kwargs=True)

    def _unet_hook(self, unet: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
        labels = kwargs.get("class_labels")
        if labels is None:
            raise ValueError("a UNet with the degradation-aware output norm needs class_labels = [degradation "
                             "embedding, keep] (RestorationUNet.time_labels) in every call")
        self._labels = labels

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.norm(h)
        labels = self._labels
        if labels is None:
            raise ValueError("DegradationOutputNorm called outside a UNet call with class_labels")
        p = self.linear_1.weight
        emb, keep = labels[:, :-1].to(p.dtype), labels[:, -1].to(p.dtype)
        hf = h.to(p.dtype)
        stats = torch.cat([hf.mean((2, 3)), torch.log(hf.var((2, 3), unbiased=False).sqrt() + 1e-3)], dim=1)
        if stats.shape[0] != emb.shape[0]:
            raise ValueError(f"output-norm labels batch {emb.shape[0]} does not match the features' {h.shape[0]}")
        scale, shift = self.linear_2(self.act(self.linear_1(torch.cat([self.embed_norm(emb), stats], 1)))).chunk(2, 1)
        keep = keep.view(-1, 1)
        scale, shift = (scale * keep)[..., None, None], (shift * keep)[..., None, None]
        return out * (1 + scale.to(out.dtype)) + shift.to(out.dtype)
