"""DA-CLIP's zero-shot degradation probabilities: the controller's degradation embedding against the text embeddings
of degradation words, scaled by the model's own learned temperature (``logit_scale``), as DA-CLIP's training loss
scales them. A fixed scale such as CLIP's usual ``100`` makes any model look certain (every probability near 0 or
1); the learned one is what the contrastive training calibrated."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DegradationProbabilities"]


class DegradationProbabilities:
    """``probs = softmax(exp(logit_scale) · normalize(degradation embedding) · normalize(text(words))ᵀ)``.

    Args:
        model: a :class:`~daclip_lora.DaCLIP` (its controller LoRA merged or attached).
        tokenizer: its tokenizer.
        words: the degradation words (at least one).
    """

    def __init__(self, model: Any, tokenizer: Any, words: Sequence[str]):
        self.words: List[str] = list(words)
        if not self.words:
            raise ValueError("DA-CLIP's degradation probabilities need at least one degradation word")
        device = next(model.parameters()).device
        with torch.no_grad():
            self.text = model.encode_text(tokenizer(self.words).to(device), normalize=True).float()
            self.scale = float(model.logit_scale.exp())

    def from_embeddings(self, degradation: torch.Tensor) -> torch.Tensor:
        """``(B, len(words))`` probabilities (rows sum to 1) from controller degradation embeddings ``(B, D)``."""
        degradation = F.normalize(degradation.float().to(self.text.device), dim=-1)
        return (self.scale * degradation @ self.text.T).softmax(dim=-1)

    def as_dicts(self, probs: torch.Tensor) -> List[Dict[str, float]]:
        """One ``{word: probability}`` per row of :meth:`from_embeddings`."""
        return [{w: float(p) for w, p in zip(self.words, row)} for row in probs.cpu().double()]
