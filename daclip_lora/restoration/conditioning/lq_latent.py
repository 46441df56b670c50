"""The LQ latent at ``conv_in``: the UNet's first convolution is widened from ``C`` to ``2C`` input channels, the LQ
image's VAE latent is concatenated to the noisy latent, and the new channels' weights start at zero."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .base import Conditions, ConditioningPath, UNetCall, owner

__all__ = ["LQConvIn", "LQLatent"]


class LQConvIn(nn.Module):
    """``conv_in`` taking ``[noisy latent, LQ latent]``: the base conv plus the path's zero-initialised LQ conv."""

    def __init__(self, conv_in: nn.Conv2d, path: "LQLatent"):
        super().__init__()
        self.base = conv_in
        owner(self, path)
        self.base_channels = conv_in.in_channels
        # diffusers reads conv_in.in_channels / weight.dtype in places
        self.in_channels = self.base_channels + path.conv.in_channels
        self.out_channels = conv_in.out_channels

    @property
    def weight(self) -> torch.Tensor:  # the equivalent widened conv weight
        return torch.cat([self.base.weight, self.path.conv.weight.to(self.base.weight.dtype)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, lq = self.base_channels, self.path.conv
        return self.base(x[:, :c]) + lq(x[:, c:].to(lq.weight.dtype)).to(x.dtype)

    def fused(self) -> nn.Conv2d:
        """One plain ``Conv2d`` over all input channels, equivalent to this module (for inference)."""
        b = self.base
        conv = nn.Conv2d(self.in_channels, self.out_channels, b.kernel_size, b.stride, b.padding,
                         bias=b.bias is not None).to(b.weight.device, b.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if b.bias is not None:
                conv.bias.copy_(b.bias)
        return conv.requires_grad_(False)


class LQLatent(ConditioningPath):
    """No options. Reads ``Conditions.lq_latent`` (and ``keep_lq``)."""

    name = "lq_latent"

    def __init__(self, config: Any, unet: nn.Module):
        super().__init__(config, unet)
        base = unet.conv_in
        self.conv = nn.Conv2d(config.latent_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                              bias=False)
        nn.init.zeros_(self.conv.weight)
        unet.conv_in = LQConvIn(base, self)

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:
        lq = conditions.require("lq_latent", self.name)
        if conditions.keep_lq is not None:
            lq = lq * conditions.keep_lq.to(lq.dtype).view(-1, 1, 1, 1)
        call.sample = torch.cat([call.sample, lq.to(call.sample.dtype)], dim=1)

    def merge(self, unet: nn.Module) -> None:
        if isinstance(unet.conv_in, LQConvIn):
            unet.conv_in = unet.conv_in.fused()
