"""Degradation-aware output norm: the UNet's last normalisation (``conv_norm_out``) scaled and shifted per channel and
per image from DA-CLIP's degradation embedding and the statistics the normalisation removes.

Why. A GroupNorm with as many groups as channels (the tiny bases, and any UNet whose last level has few channels per
group) is an instance norm: it removes every channel's mean and scale per image, so ``conv_out`` cannot produce an
image-dependent global offset or gain. One-step restoration of haze, low light or shadows is mostly that (the output
is ``x0 = z_LQ - k · eps``: a global colour or brightness change needs a global ``eps``), and the time embedding
cannot carry it either (each ResBlock's second norm removes it again). Here the norm's output becomes
``GN(h) · (1 + s) + b``, with ``(s, b) = MLP([LN(e), mean_c(h), log std_c(h)])``: the degradation embedding ``e``
says what to correct, the pre-norm per-channel statistics of ``h`` say how much. The MLP's last layer starts at zero
(step 0 is exactly the base model); ``keep_daclip`` switches it off per sample. The same idea as AdaGN / adaLN
(Dhariwal & Nichol 2021; Peebles & Xie 2023), here with the statistics fed back in.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn as nn

from .base import Conditions, ConditioningPath, UNetCall, owner

__all__ = ["ModulatedNorm", "OutputNorm"]


class ModulatedNorm(nn.Module):
    """The UNet's ``conv_norm_out`` (kept, frozen with the UNet) followed by its path's per-image scale and shift."""

    def __init__(self, norm: nn.GroupNorm, path: "OutputNorm"):
        super().__init__()
        self.norm = norm
        owner(self, path)
        self.num_channels = norm.num_channels  # diffusers reads conv_norm_out.num_channels in places

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.path.modulate(h, self.norm(h))


class OutputNorm(ConditioningPath):
    """Option ``hidden`` (the MLP's width, default 64). Reads ``Conditions.degradation`` (and ``keep_daclip``)."""

    name = "output_norm"

    def __init__(self, config: Any, unet: nn.Module, hidden: int = 64):
        super().__init__(config, unet)
        norm = getattr(unet, "conv_norm_out", None)
        if not isinstance(norm, nn.GroupNorm):
            raise ValueError("sd.conditioning.output_norm needs a UNet with a GroupNorm conv_norm_out (SD 1.x/2.x, "
                             "SDXL and the tiny bases have one)")
        channels = norm.num_channels
        self.embed_norm = nn.LayerNorm(config.embed_dim)
        self.linear_1 = nn.Linear(config.embed_dim + 2 * channels, hidden)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)
        self._bound: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (e, keep) of the last call (see base)
        unet.conv_norm_out = ModulatedNorm(norm, self)

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:
        emb = conditions.require("degradation", self.name).float()
        self._bound = (emb, conditions.keep("daclip", emb))

    def release(self) -> None:
        self._bound = None

    def modulate(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out · (1 + s) + b``: ``out`` is the base norm of ``h``; ``s, b`` from the bound embedding and ``h``."""
        if self._bound is None:
            raise ValueError("a UNet with the degradation-aware output norm was called without its conditions: call "
                             "it through RestorationUNet.denoise")
        p = self.linear_1.weight
        emb, keep = self._bound[0].to(p.dtype), self._bound[1].to(p.dtype)
        hf = h.to(p.dtype)
        stats = torch.cat([hf.mean((2, 3)), torch.log(hf.var((2, 3), unbiased=False).sqrt() + 1e-3)], dim=1)
        if stats.shape[0] != emb.shape[0]:
            raise ValueError(f"output-norm conditions batch {emb.shape[0]} does not match the features' {h.shape[0]}")
        scale, shift = self.linear_2(self.act(self.linear_1(torch.cat([self.embed_norm(emb), stats], 1)))).chunk(2, 1)
        keep = keep.view(-1, 1)
        scale, shift = (scale * keep)[..., None, None], (shift * keep)[..., None, None]
        return out * (1 + scale.to(out.dtype)) + shift.to(out.dtype)
