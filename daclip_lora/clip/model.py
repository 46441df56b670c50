"""DA-CLIP: a frozen CLIP steered by a trainable copy of its vision tower (the *controller*).

The semantics follow the reference implementation (Luo et al., "Controlling Vision-Language Models
for Multi-Task Image Restoration", ICLR 2024) exactly, on top of upstream ``open_clip`` 3.x modules:

* ``visual_control`` is a deep copy of ``clip.visual`` whose transformer is wrapped by
  :class:`ControlTransformer`, which adds one zero-initialised ``Linear(width, width)`` per block.
* Controller pass: after block ``i`` the controller collects ``h_i = zero_i(x_i)``; its own stream
  continues unchanged. Its pooled, projected output is the *degradation* embedding.
* Controlled CLIP pass: after its block ``i`` the frozen CLIP adds ``h_{L-1-i}`` (the reference pops
  from the end of the list), and its pooled output is the *content* embedding.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ControlTransformer", "DaCLIP"]

BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


def _run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    after_block: BlockHook,
    attn_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Run an open_clip ``Transformer``'s blocks on batch-first ``x``, calling ``after_block(i, x)``.

    Mirrors ``open_clip.transformer.Transformer.forward`` (layout handling, gradient checkpointing)
    so that the hook sees every block output exactly as the stock forward would produce it.
    """
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    use_ckpt = transformer.grad_checkpointing and torch.is_grad_enabled()
    for i, block in enumerate(transformer.resblocks):
        if use_ckpt:
            x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
        x = after_block(i, x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


class ControlTransformer(nn.Module):
    """Wraps a copied open_clip ``Transformer`` and adds one zero-initialised linear per block.

    State-dict layout matches the reference: ``transformer.resblocks.*`` and ``zero_modules.{i}.*``.

    Args:
        transformer: the (copied) vision ``Transformer`` to wrap; it is used as is, not copied.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.layers: int = transformer.layers
        self.width: int = transformer.width
        self.zero_modules = nn.ModuleList(
            [_zero_module(nn.Linear(self.width, self.width)) for _ in range(self.layers)]
        )

    # VisionTransformer.set_grad_checkpointing() sets `self.transformer.grad_checkpointing`, which
    # for the controller is this wrapper: forward it to the wrapped transformer.
    @property
    def grad_checkpointing(self) -> bool:
        return self.transformer.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.transformer.grad_checkpointing = enable

    @property
    def batch_first(self) -> bool:
        return getattr(self.transformer, "batch_first", True)

    def get_cast_dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        output_hiddens: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Run the blocks; with ``output_hiddens`` also return ``[zero_i(x_i) for each block i]``.

        Without ``output_hiddens`` the wrapper is a drop-in transformer, so ``visual_control(image)``
        works as a plain vision tower and returns the degradation embedding.
        """
        hiddens: List[torch.Tensor] = []

        def collect(i: int, h: torch.Tensor) -> torch.Tensor:
            if output_hiddens:
                hiddens.append(self.zero_modules[i](h))
            return h

        x = _run_blocks(self.transformer, x, collect, attn_mask=attn_mask)
        return (x, hiddens) if output_hiddens else x


def _zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _vision_features(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pool and project the transformer output ``x`` of an open_clip ``VisionTransformer``."""
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def _check_vision_tower(visual: nn.Module) -> None:
    required = ("_embeds", "_pool", "transformer", "proj")
    missing = [name for name in required if not hasattr(visual, name)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        raise TypeError(
            f"DA-CLIP needs an open_clip ViT vision tower (open_clip.transformer.VisionTransformer), "
            f"got {type(visual).__name__}. Use a config whose vision_cfg has integer 'layers' and no "
            f"'timm_model_name'."
        )
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise ValueError(
            "DA-CLIP cannot use patch dropout: the controller and the CLIP tower would drop different "
            "patches, so the per-token control signals would no longer line up. Set "
            "vision_cfg.patch_dropout to 0."
        )


class DaCLIP(nn.Module):
    """Degradation-aware CLIP.

    Attributes:
        clip: the wrapped (normally frozen) ``open_clip.CLIP``.
        visual: alias of ``clip.visual`` (so the state dict holds both ``visual.*`` and
            ``clip.visual.*`` keys, like the released checkpoints).
        visual_control: the controller, a copy of ``clip.visual`` with a :class:`ControlTransformer`.
        logit_scale: DA-CLIP's own logit scale (a copy of CLIP's).

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT vision tower.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        _check_vision_tower(clip_model.visual)
        self.clip = clip_model
        self.visual = clip_model.visual
        self.visual_control = copy.deepcopy(clip_model.visual)
        self.visual_control.transformer = ControlTransformer(self.visual_control.transformer)
        self.logit_scale = copy.deepcopy(clip_model.logit_scale)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def initial_controller(self, mode: str = "by_name") -> None:
        """Initialise the controller from CLIP's vision tower (and the logit scale from CLIP's).

        Args:
            mode: ``"by_name"`` (default): every vision parameter is copied to the controller parameter of
                the same name and the zero modules stay zero, so the controlled CLIP starts exactly as the
                plain CLIP (the paper's design). ``"reference"``: the original code's copy *by position*,
                reproduced for bit-exact comparisons: zipping the two parameter lists pairs CLIP's
                ``ln_post`` weight/bias with the controller's ``zero_modules.0`` weight/bias (the weight is
                broadcast into every row), and the controller's own ``ln_post`` keeps its value.
        """
        if mode == "reference":
            for (name, param_v), (_, param_c) in zip(self.clip.visual.named_parameters(),
                                                     self.visual_control.named_parameters()):
                if "transformer" not in name:
                    param_c.data.copy_(param_v.data)
            for param_v, param_c in zip(self.clip.visual.transformer.parameters(),
                                        self.visual_control.transformer.parameters()):
                param_c.data.copy_(param_v.data)
            self.logit_scale.data.copy_(self.clip.logit_scale.data)
            return
        if mode != "by_name":
            raise ValueError(f"controller_init must be 'by_name' or 'reference', got {mode!r}")
        control_params = dict(self.visual_control.named_parameters())
        for name, param in self.clip.visual.named_parameters():
            target = name.replace("transformer.", "transformer.transformer.", 1) if name.startswith(
                "transformer.") else name
            control_params[target].copy_(param)
        self.logit_scale.copy_(self.clip.logit_scale)

    def lock_clip(self) -> None:
        """Freeze every parameter of the wrapped CLIP (``requires_grad=False``)."""
        for param in self.clip.parameters():
            param.requires_grad = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable gradient checkpointing in the CLIP towers and in the controller."""
        self.clip.set_grad_checkpointing(enable)
        self.visual_control.set_grad_checkpointing(enable)

    @property
    def num_layers(self) -> int:
        return self.visual_control.transformer.layers

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(height, width)`` of the images the vision towers take (``force_image_size`` changes it)."""
        size = self.clip.visual.image_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    # ---------------------------------------------------------------- encoders
    def control_hiddens(self, image: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Controller pass: ``(degradation features, [zero_i(x_i) for each block])``."""
        vc = self.visual_control
        x, hiddens = vc.transformer(vc._embeds(image), output_hiddens=True)
        return _vision_features(vc, x), hiddens

    def encode_controlled(self, image: torch.Tensor, hiddens: List[torch.Tensor]) -> torch.Tensor:
        """CLIP vision pass with block ``i`` followed by ``+ hiddens[L-1-i]`` (reference order)."""
        visual = self.clip.visual
        n = len(hiddens)
        if n != len(visual.transformer.resblocks):
            raise ValueError(
                f"got {n} control signals for a vision tower with "
                f"{len(visual.transformer.resblocks)} blocks; pass one per block"
            )
        x = _run_blocks(visual.transformer, visual._embeds(image), lambda i, h: h + hiddens[n - 1 - i])
        return _vision_features(visual, x)

    def encode_image(
        self, image: torch.Tensor, control: bool = False, normalize: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Encode images.

        Args:
            image: ``(B, 3, H, W)`` preprocessed images, in the model's dtype.
            control: if ``False``, return plain CLIP image features; if ``True``, return
                ``(image_features, degra_features)``: the controlled CLIP's content features and
                the controller's degradation features.
            normalize: L2-normalise the returned features.
        """
        if not control:
            return self.clip.encode_image(image, normalize=normalize)
        degra_features, hiddens = self.control_hiddens(image)
        image_features = self.encode_controlled(image, hiddens)
        if normalize:
            image_features = F.normalize(image_features, dim=-1)
            degra_features = F.normalize(degra_features, dim=-1)
        return image_features, degra_features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP's text encoder."""
        return self.clip.encode_text(text, normalize=normalize)

    def forward(
        self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None
    ) -> Dict[str, Optional[torch.Tensor]]:
        """Training forward.

        Args:
            image: ``(B, 3, H, W)`` images.
            text: ``(B, 2 * context_length)`` tokens: caption tokens then degradation-word tokens
                (split with ``text.chunk(2, dim=-1)``).

        Returns:
            dict with normalised ``image_features``, ``text_features``, ``image_degra_features``,
            ``text_degra_features`` and ``logit_scale`` (already exponentiated).
        """
        image_features = image_degra_features = text_features = text_degra_features = None
        if image is not None:
            image_features, image_degra_features = self.encode_image(image, control=True, normalize=True)
        if text is not None:
            caption, degradation = text.chunk(2, dim=-1)
            text_features = self.encode_text(caption, normalize=True)
            text_degra_features = self.encode_text(degradation, normalize=True)
        return {
            "image_features": image_features,
            "text_features": text_features,
            "image_degra_features": image_degra_features,
            "text_degra_features": text_degra_features,
            "logit_scale": self.logit_scale.exp(),
        }
