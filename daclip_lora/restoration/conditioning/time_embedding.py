"""The degradation embedding as a residual of the UNet's time embedding, which every ResBlock receives (DA-CLIP's own
UIR network conditions its ResBlocks this way).

The residual reaches the UNet through diffusers' own argument for a condition of the time embedding,
``timestep_cond``: the UNet's ``time_embedding`` is wrapped to add it (the residual is computed by the path, outside
the UNet). The output layer starts at zero, so step 0 is exactly the base model; ``keep_daclip`` scales the
residual per sample.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from .base import Conditions, ConditioningPath, UNetCall

__all__ = ["ResidualTimeEmbedding", "TimeEmbedding"]


class ResidualTimeEmbedding(nn.Module):
    """The UNet's ``TimestepEmbedding`` plus ``condition``, a residual of its output (``timestep_cond``)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, sample: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.base(sample)
        return out if condition is None else out + condition.to(out.dtype)


class TimeEmbedding(ConditioningPath):
    """No options. Reads ``Conditions.degradation`` (and ``keep_daclip``)."""

    name = "time_embedding"

    def __init__(self, config: Any, unet: nn.Module):
        super().__init__(config, unet)
        if getattr(unet.config, "time_cond_proj_dim", None):
            raise ValueError("sd.conditioning.time_embedding passes the residual as timestep_cond, which this UNet "
                             "already reads (time_cond_proj_dim is set, e.g. an LCM-distilled base); use another "
                             "path (modulated_lora, output_norm)")
        time_dim = unet.time_embedding.linear_2.out_features
        self.norm = nn.LayerNorm(config.embed_dim)
        self.linear_1 = nn.Linear(config.embed_dim, time_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_dim, time_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)
        unet.time_embedding = ResidualTimeEmbedding(unet.time_embedding)

    def residual(self, conditions: Conditions) -> torch.Tensor:
        """``(B, time_embed_dim)``: what the degradation embedding adds to the time embedding."""
        p = self.linear_1.weight
        emb = conditions.require("degradation", self.name).float().to(p.dtype)
        keep = conditions.keep("daclip", emb).view(-1, 1).float().to(p.dtype)
        return self.linear_2(self.act(self.linear_1(self.norm(emb)))) * keep

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:
        call.kwargs["timestep_cond"] = self.residual(conditions)
