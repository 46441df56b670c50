"""DA-CLIP's zero-shot reading of degradation embeddings, for the pipeline's ``color_fix: auto``, the folder
tool's reports and the web app: which degradation word each image's embedding is closest to, and a word's text
embedding in place of an image's (when the user knows the degradation better than the model)."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DegradationReader"]


class DegradationReader:
    """Zero-shot degradation words of one DA-CLIP model.

    Args:
        daclip: the DA-CLIP model (its text tower encodes the words).
        model_name: its config name (picks the tokenizer).
        words: the candidate words (default: DA-CLIP's ten degradations).
    """

    def __init__(self, daclip: nn.Module, model_name: str, words: Optional[Sequence[str]] = None):
        self.daclip, self.model_name = daclip, model_name
        self._words = list(words) if words is not None else None
        self._probabilities: Any = None

    @property
    def words(self) -> Any:
        """The classifier over the words (:class:`~daclip_lora.clip.zero_shot.DegradationProbabilities`), built on
        first use (it encodes every word once)."""
        if self._probabilities is None:
            from ..clip.factory import get_tokenizer
            from ..clip.zero_shot import DegradationProbabilities
            from ..data.degrade import DEGRADATION_FUNCTIONS

            words = self._words if self._words is not None else list(DEGRADATION_FUNCTIONS)
            self._probabilities = DegradationProbabilities(self.daclip, get_tokenizer(self.model_name), words)
        return self._probabilities

    def predict(self, degradation: torch.Tensor) -> List[str]:
        """The most probable word for each degradation embedding ``(B, D)``."""
        words = self.words
        return [words.words[i] for i in words.from_embeddings(degradation).argmax(-1).tolist()]

    @torch.no_grad()
    def from_word(self, word: str, like: torch.Tensor) -> torch.Tensor:
        """The DA-CLIP text embedding of ``word`` (e.g. ``"hazy"``) in place of the degradation embeddings
        ``like`` ``(B, D)``, scaled to each one's norm (DA-CLIP aligns the two spaces)."""
        from ..clip.factory import get_tokenizer

        if not str(word).strip():
            raise ValueError("degradation must be a non-empty word such as 'hazy'")
        tokens = get_tokenizer(self.model_name)([str(word)]).to(like.device)
        text = F.normalize(self.daclip.encode_text(tokens).float(), dim=-1)
        return (text * like.float().norm(dim=-1, keepdim=True)).to(like.dtype)
