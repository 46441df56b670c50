"""Degradation-modulated LoRA: every peft LoRA layer of the UNet computes ``B · M(e) · A x`` instead of ``B · A x``,
with ``M`` an ``r x r`` matrix per layer and per sample, predicted from DA-CLIP's degradation embedding ``e``.

S3Diff (Zhang et al. 2024) modulates its LoRA this way from two scalar degradation scores; here ``M`` comes from the
CLIP degradation embedding: ``M_l(e) = I + keep * W_out(SiLU(W_in LN(e) + b_l))``, ``b_l`` a learned embedding of
layer ``l``, ``W_out`` zero-initialised (so a fresh path is plain LoRA, and with LoRA's ``B = 0`` the base model).

It is a peft LoRA *variant* (:class:`ModulatedLoraVariant`, the mechanism DoRA and aLoRA use): each LoRA layer's
forward calls the variant, and the variant's merge rule is part of its type: ``M`` depends on the image, so the
layer refuses ``merge`` (the pipeline keeps such a LoRA unmerged). The matrices of one UNet call are computed once
by :meth:`ModulatedLora.prepare` and read by every layer's variant.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
from peft.tuners.lora.layer import LoraVariant

from .base import Conditions, ConditioningPath, UNetCall

__all__ = ["ModulatedLora", "ModulatedLoraVariant", "lora_layers"]


def lora_layers(unet: nn.Module, adapter: str = "default") -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft LoRA layer of ``unet`` holding ``adapter`` (Linear and Conv2d), in order."""
    out = []
    for name, module in unet.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            out.append((name, module))
    return out


class ModulatedLoraVariant(LoraVariant):
    """The LoRA variant of one layer (``index`` among the path's layers): ``result + B(M(e) A(dropout(x))) * s``."""

    def __init__(self, path: "ModulatedLora", index: int):
        self.path, self.index = path, index

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def _refuse(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise ValueError("a degradation-modulated LoRA (sd.conditioning.modulated_lora) changes with each image, so "
                         "it cannot be merged into the UNet's weights; keep it unmerged")

    merge_safe = merge_unsafe = unmerge = _refuse

    def forward(self, module: nn.Module, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        h = self.path.modulate(self.index, h)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]


class ModulatedLora(ConditioningPath):
    """Option ``hidden`` (the shared MLP's width, default 64). Reads ``Conditions.degradation`` (and
    ``keep_daclip``). Built after the UNet's LoRA (every LoRA layer must have the same rank)."""

    name = "modulated_lora"
    lora_mergeable = False
    after_lora = True

    def __init__(self, config: Any, unet: nn.Module, hidden: int = 64):
        super().__init__(config, unet)
        layers = lora_layers(unet)
        if not layers:
            raise ValueError("sd.conditioning.modulated_lora needs LoRA layers on the UNet; sd.lora.targets matched "
                             "none")
        self.rank, self.num_layers = _common_rank(layers), len(layers)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.linear_in = nn.Linear(config.embed_dim, hidden)
        self.layer_embedding = nn.Parameter(torch.randn(self.num_layers, hidden) * 0.02)
        self.act = nn.SiLU()
        self.linear_out = nn.Linear(hidden, self.rank * self.rank)
        nn.init.zeros_(self.linear_out.weight)
        nn.init.zeros_(self.linear_out.bias)
        self._matrices: Optional[torch.Tensor] = None  # (B, L, r, r) of the last call (see base: checkpointing)
        for index, (name, layer) in enumerate(layers):
            if "default" in layer.lora_variant:  # DoRA (sd.lora.use_dora) or another variant: one per layer
                raise ValueError(f"sd.conditioning.modulated_lora: the LoRA layer {name} already has a "
                                 f"{type(layer.lora_variant['default']).__name__}; a modulated LoRA cannot be combined "
                                 f"with sd.lora.use_dora: set one of them off")
            layer.lora_variant["default"] = ModulatedLoraVariant(self, index)

    def matrices(self, conditions: Conditions) -> torch.Tensor:
        """``(B, L, r, r)`` modulation matrices of the degradation embeddings (identity where ``keep`` is 0)."""
        p = self.linear_in.weight
        emb = conditions.require("degradation", self.name).float().to(p.dtype)
        keep = conditions.keep("daclip", emb).float().to(p.dtype)
        h = self.linear_in(self.norm(emb))[:, None] + self.layer_embedding[None]
        delta = self.linear_out(self.act(h)).view(emb.shape[0], self.num_layers, self.rank, self.rank)
        eye = torch.eye(self.rank, device=p.device, dtype=p.dtype)
        return eye + delta * keep.view(-1, 1, 1, 1)

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:
        self._matrices = self.matrices(conditions)

    def release(self) -> None:
        self._matrices = None

    def modulate(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """``M_index`` applied to a LoRA layer's ``A`` output ``h``: ``(B, ..., r)`` or, for a conv, ``(B, r, H, W)``."""
        if self._matrices is None:
            raise ValueError("a UNet with a degradation-modulated LoRA was called without its conditions: call it "
                             "through RestorationUNet.denoise")
        m = self._matrices[:, index].to(h.dtype)
        if h.shape[0] != m.shape[0]:
            raise ValueError(f"LoRA modulation batch {m.shape[0]} does not match the layer's batch {h.shape[0]}")
        if h.ndim == 4:  # Conv2d: (B, r, H, W)
            return torch.einsum("brhw,brs->bshw", h, m)
        return torch.einsum("b...r,brs->b...s", h, m)


def _common_rank(layers: List[Tuple[str, nn.Module]]) -> int:
    ranks = {name: layer.r["default"] for name, layer in layers}
    if len(set(ranks.values())) != 1:
        raise ValueError(f"sd.conditioning.modulated_lora needs one LoRA rank on every layer, got "
                         f"{sorted(set(ranks.values()))} (no per-layer rank_pattern)")
    return next(iter(ranks.values()))
