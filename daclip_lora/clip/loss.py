"""DA-CLIP's training loss, and ``create_loss`` for the original training script's argument namespace.

DA-CLIP (Luo et al., ICLR 2024, Sec. 3.2) trains the controller with two CLIP contrastive losses sharing
one temperature: the *content* loss between the controlled image embedding and the clean caption's
text embedding, and the *degradation* loss between the controller's degradation embedding and the
degradation word's text embedding. With ``s`` the (exponentiated) logit scale and ``N`` pairs,

    logits_ij = s * <image_i, text_j>,   L = (CE(logits, arange N) + CE(logits^T, arange N)) / 2

per pair of feature sets (the features are already L2-normalised by ``DaCLIP.forward``).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as _UpstreamClipLoss

logger = logging.getLogger(__name__)

__all__ = ["ClipLoss", "DaClipLoss", "create_loss", "daclip_loss", "LOSS_ARG_DEFAULTS"]

Losses = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]


class ClipLoss(_UpstreamClipLoss):
    """open_clip's ``ClipLoss`` that also accepts a DA-CLIP model's outputs.

    ``loss(**model(images, texts))`` works for CLIP and DA-CLIP models alike: when
    ``image_degra_features`` and ``text_degra_features`` are given (DA-CLIP), the degradation
    contrastive loss is computed too and the result is DA-CLIP's pair (see :class:`DaClipLoss`).
    The constructor arguments are open_clip's (``local_loss``, ``gather_with_grad``, ``cache_labels``,
    ``rank``, ``world_size``, ``use_horovod``).
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None, output_dict: bool = False,
                image_degra_features: Optional[torch.Tensor] = None,
                text_degra_features: Optional[torch.Tensor] = None) -> Losses:
        clip_loss = super().forward(image_features, text_features, logit_scale, logit_bias)
        if image_degra_features is None and text_degra_features is None:
            return {"contrastive_loss": clip_loss} if output_dict else clip_loss
        if image_degra_features is None or text_degra_features is None:
            raise ValueError("DA-CLIP's degradation loss needs both image_degra_features and text_degra_features "
                             "(the outputs of DaCLIP.forward); got only one")
        degra_loss = super().forward(image_degra_features, text_degra_features, logit_scale, logit_bias)
        if output_dict:
            return {"contrastive_loss": clip_loss, "degra_loss": degra_loss}
        return clip_loss, degra_loss


class DaClipLoss(ClipLoss):
    """DA-CLIP's loss: ``(content contrastive loss, degradation contrastive loss)``.

    Called as the original ``train.py`` calls it: ``loss(**model_out, output_dict=True)`` with the
    outputs of ``DaCLIP.forward`` returns ``{"contrastive_loss": ..., "degra_loss": ...}``.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,  # type: ignore[override]
                image_degra_features: torch.Tensor, text_degra_features: torch.Tensor, logit_scale: torch.Tensor,
                output_dict: bool = False, logit_bias: Optional[torch.Tensor] = None) -> Losses:
        return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict,
                                image_degra_features=image_degra_features, text_degra_features=text_degra_features)


def daclip_loss(out: Dict[str, torch.Tensor], kind: str = "reference", labels: Optional[torch.Tensor] = None,
                class_text: Optional[torch.Tensor] = None, caption_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """The controller's training loss from :meth:`DaCLIP.forward` outputs, keyed as :class:`DaClipLoss` with
    ``output_dict=True`` keys them (``degra_loss``, ``contrastive_loss``) plus ``loss``, the weighted total.

    Args:
        out: ``image_features``, ``image_degra_features``, ``logit_scale`` and, when available,
            ``text_features`` (captions) and ``text_degra_features`` (the batch's degradation words).
        kind: ``"reference"`` (DA-CLIP's InfoNCE on degradation words, as :class:`DaClipLoss`) or
            ``"label_aware"`` (cross-entropy over ``class_text``, the normalised features of the degradation
            vocabulary, with ``labels``: a batch may hold several images of one degradation).
        caption_weight: weight of the caption (content) loss in ``loss``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    scale = out["logit_scale"]
    infonce = _UpstreamClipLoss()  # single-process symmetric InfoNCE, as DaClipLoss computes each term
    if kind == "reference":
        degra = infonce(out["image_degra_features"], out["text_degra_features"], scale)
    elif kind == "label_aware":
        degra = F.cross_entropy(scale * out["image_degra_features"] @ class_text.T, labels)
    else:
        raise ValueError(f"unknown controller loss {kind!r}; use 'label_aware' or 'reference'")
    losses = {"degra_loss": degra}
    total = degra
    if out.get("text_features") is not None:
        losses["contrastive_loss"] = infonce(out["image_features"], out["text_features"], scale)
        total = total + caption_weight * losses["contrastive_loss"]
    losses["loss"] = total
    return losses


#: Values ``create_loss`` uses for attributes missing from an older argument namespace (the DA-CLIP fork's
#: ``params.py`` predates open_clip's ``siglip``, ``loss_dist_impl``, ...). They are open_clip's defaults.
LOSS_ARG_DEFAULTS: Dict[str, Any] = {
    "model": "", "distill": False, "siglip": False, "local_loss": False, "gather_with_grad": False, "rank": 0,
    "world_size": 1, "horovod": False, "coca_caption_loss_weight": 2.0, "coca_contrastive_loss_weight": 1.0,
    "loss_dist_impl": None,
}


def create_loss(args: Any) -> torch.nn.Module:
    """open_clip's ``create_loss(args)``, plus DA-CLIP models and older argument namespaces.

    Args:
        args: the training script's ``argparse.Namespace`` (or any object with those attributes). Missing
            attributes take :data:`LOSS_ARG_DEFAULTS`, so the DA-CLIP fork's parser works unchanged.

    Returns:
        :class:`DaClipLoss` for DA-CLIP model names (``'daclip'`` in ``args.model``), otherwise what
        open_clip's ``create_loss`` returns for the same arguments.
    """
    values = {k: getattr(args, k, default) for k, default in LOSS_ARG_DEFAULTS.items()}
    filled = argparse.Namespace(**{**getattr(args, "__dict__", {}), **values})
    if "daclip" in str(values["model"]).lower() and not values["distill"]:
        return DaClipLoss(local_loss=values["local_loss"], gather_with_grad=values["gather_with_grad"],
                          cache_labels=True, rank=values["rank"], world_size=values["world_size"],
                          use_horovod=values["horovod"])
    import open_clip

    loss = open_clip.create_loss(filled)
    if type(loss) is _UpstreamClipLoss:  # same arguments, but also takes DA-CLIP outputs
        loss = ClipLoss(local_loss=values["local_loss"], gather_with_grad=values["gather_with_grad"],
                        cache_labels=True, rank=values["rank"], world_size=values["world_size"],
                        use_horovod=values["horovod"])
    return loss
