"""Degradation-modulated LoRA: every peft LoRA layer of the UNet computes ``B · M(e) · A x`` instead of ``B · A x``,
with ``M`` an ``r x r`` matrix per layer and per sample, predicted from DA-CLIP's degradation embedding ``e``.

S3Diff (Zhang et al. 2024) modulates its LoRA this way from two scalar degradation scores; here ``M`` comes from
the CLIP degradation embedding: ``M_l(e) = I + keep * W_out(SiLU(W_in LN(e) + b_l))``, ``b_l`` a learned embedding
of layer ``l``, ``W_out`` zero-initialised (so a fresh model is plain LoRA, and with LoRA's ``B = 0`` the base
model). ``keep`` is the per-sample condition weight (0: the unconditional branch of guidance, plain LoRA).

It rides on peft's layers rather than forking them: a forward hook on each ``lora_A`` module multiplies its
output by ``M``; a forward pre-hook on the UNet reads ``class_labels`` (``[e, keep]``, the same per-sample labels
as the time-embedding path, so guidance and tiling batch them as they batch the rest) and computes every
layer's ``M`` once per UNet call. ``M`` depends on the image, so the LoRA cannot be merged into the weights once
for all images; the pipeline keeps the adapter unmerged (see :meth:`RestorationPipeline.merge_lora`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["LoraModulation", "lora_a_modules"]


def lora_a_modules(unet: nn.Module, adapter: str = "default") -> List[Tuple[str, nn.Module]]:
    """``(name, lora_A module)`` of every peft LoRA layer of ``unet`` (Linear and Conv2d), in module order."""
    out = []
    for name, module in unet.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            out.append((name, lora_a[adapter]))
    return out


class LoraModulation(nn.Module):
    """Per-layer, per-sample ``r x r`` modulation of the UNet's LoRA from the degradation embedding.

    Args:
        embed_dim: DA-CLIP's embedding width.
        rank: the LoRA rank ``r`` (every modulated layer must have it).
        num_layers: how many LoRA layers are modulated (one learned embedding each).
        hidden: width of the shared MLP.
    """

    def __init__(self, embed_dim: int, rank: int, num_layers: int, hidden: int = 64):
        super().__init__()
        if num_layers < 1:
            raise ValueError("sd.conditioning.modulated_lora needs LoRA layers on the UNet; sd.lora.targets "
                             "matched none")
        self.rank, self.num_layers = rank, num_layers
        self.norm = nn.LayerNorm(embed_dim)
        self.linear_in = nn.Linear(embed_dim, hidden)
        self.layer_embedding = nn.Parameter(torch.randn(num_layers, hidden) * 0.02)
        self.act = nn.SiLU()
        self.linear_out = nn.Linear(hidden, rank * rank)
        nn.init.zeros_(self.linear_out.weight)
        nn.init.zeros_(self.linear_out.bias)
        self._current: Optional[torch.Tensor] = None  # (B, L, r, r) of the UNet call in flight
        self._handles: List[Any] = []

    def matrices(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, L, r, r)`` modulation matrices for ``class_labels`` ``[e, keep]``."""
        emb, keep = labels[:, :-1], labels[:, -1]
        p = self.linear_in.weight
        h = self.linear_in(self.norm(emb.to(p.dtype)))[:, None] + self.layer_embedding[None]
        delta = self.linear_out(self.act(h)).view(labels.shape[0], self.num_layers, self.rank, self.rank)
        eye = torch.eye(self.rank, device=p.device, dtype=p.dtype)
        return eye + delta * keep.to(p.dtype).view(-1, 1, 1, 1)

    def attach(self, unet: nn.Module) -> None:
        """Hook the UNet's LoRA layers (call once, after the LoRA is injected)."""
        layers = lora_a_modules(unet)
        if len(layers) != self.num_layers:
            raise ValueError(f"the UNet has {len(layers)} LoRA layers, the modulation was built for "
                             f"{self.num_layers}; build it with num_layers={len(layers)}")
        for index, (name, module) in enumerate(layers):
            rank = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            if rank != self.rank:
                raise ValueError(f"LoRA layer {name} has rank {rank}; the modulation needs rank {self.rank} "
                                 f"everywhere (no per-layer rank_pattern)")
            self._handles.append(module.register_forward_hook(self._layer_hook(index)))
        self._handles.append(unet.register_forward_pre_hook(self._unet_hook, with_kwargs=True))

    def _unet_hook(self, unet: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
        labels = kwargs.get("class_labels")
        if labels is None:
            raise ValueError("a UNet with degradation-modulated LoRA needs class_labels = [degradation embedding, "
                             "keep] (RestorationUNet.time_labels) in every call")
        self._current = self.matrices(labels)

    def _layer_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            m = self._current[:, index].to(out.dtype)
            if out.shape[0] != m.shape[0]:  # rows of one sample stacked (e.g. tiles): same layout as the labels
                raise ValueError(f"LoRA modulation batch {m.shape[0]} does not match the layer's batch {out.shape[0]}")
            if out.ndim == 4:  # Conv2d: (B, r, H, W)
                return torch.einsum("brhw,brs->bshw", out, m)
            return torch.einsum("b...r,brs->b...s", out, m)

        return hook

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
