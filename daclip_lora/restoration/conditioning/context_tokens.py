"""DA-CLIP tokens in the text context: the content and degradation embeddings, each projected to ``num_tokens``
tokens of the UNet's ``cross_attention_dim``, are *added* to the last positions of the text encoder's 77 hidden
states (the padding slots of SD's fixed-length prompt; prompts are truncated to leave them free).

Appending new tokens instead would change every cross-attention softmax even when they are zero (zero keys still
take attention mass), so step 0 would differ from the base model; the residual on reserved slots, with the
projector's last layer at zero, makes step 0 *exactly* the base model and keeps SD's sequence length, so the UNet,
its LoRA file and diffusers' attention processors are unchanged.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn

from .base import Conditions, ConditioningPath, UNetCall

__all__ = ["ContextProjector", "ContextTokens"]


class ContextProjector(nn.Module):
    """DA-CLIP embedding -> ``num_tokens`` context residuals; the output layer starts at zero."""

    def __init__(self, embed_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens, self.dim = num_tokens, cross_attention_dim
        self.norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, cross_attention_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cross_attention_dim, num_tokens * cross_attention_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(self.norm(embedding))))
        return x.view(embedding.shape[0], self.num_tokens, self.dim)


class ContextTokens(ConditioningPath):
    """Options: ``image`` and ``degradation`` (which embeddings are projected, default both), ``num_tokens`` (per
    embedding, default 4)."""

    name = "context_tokens"

    def __init__(self, config: Any, unet: nn.Module, image: bool = True, degradation: bool = True,
                 num_tokens: int = 4):
        super().__init__(config, unet)
        if not (image or degradation):
            raise ValueError("sd.conditioning: the context_tokens path projects neither embedding; set "
                             "image_context or degra_context, or leave the path out")
        if int(num_tokens) < 1:
            raise ValueError(f"sd.conditioning.num_tokens must be at least 1, got {num_tokens}")
        dim = int(config.cross_attention_dim)
        self.projectors = nn.ModuleDict()
        for field, on in (("image", image), ("degradation", degradation)):
            if on:
                self.projectors[field] = ContextProjector(config.embed_dim, dim, int(num_tokens))

    @classmethod
    def context_slots(cls, options: Dict[str, Any]) -> int:
        n = int(options.get("num_tokens", 4))
        return n * (int(options.get("image", True)) + int(options.get("degradation", True)))

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:
        text, dtype = call.context, next(self.parameters()).dtype
        tokens = torch.cat([projector(conditions.require(field, self.name).to(dtype))
                            for field, projector in self.projectors.items()], dim=1)
        tokens = tokens * conditions.keep("daclip", tokens).view(-1, 1, 1)  # condition dropout: per-sample 0/1
        start, end = call.take_slots(tokens.shape[1])
        call.context = torch.cat([text[:, :start], text[:, start:end] + tokens.to(text.dtype), text[:, end:]], dim=1)
