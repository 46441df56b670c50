"""The one interface of every conditioning path: how DA-CLIP's embeddings (and the LQ latent) enter the UNet.

A path is a small module, built from its options, that owns the parameters it adds and edits one UNet call
(:class:`UNetCall`) from the call's explicit per-sample inputs (:class:`Conditions`). It installs what it needs
into the UNet when built (a wrapped ``conv_in``, time embedding or ``conv_norm_out``) so the UNet stays a stock
diffusers ``UNet2DConditionModel`` whose forward is called unchanged.

Paths whose module sits where diffusers' UNet forward passes no argument (a LoRA layer, ``conv_norm_out``) are
given the call's inputs by :meth:`ConditioningPath.prepare`, which
:meth:`~daclip_lora.restoration.model.RestorationUNet.denoise` calls right before the UNet. Under autograd those
inputs stay bound until the next call, so gradient checkpointing, which runs the blocks' forward again inside the
backward pass, recomputes with the same ones (peft binds its per-call ``alora_offsets`` to its layers for the same
reason); after an inference call they are released (:meth:`ConditioningPath.release`).

Register a path with :data:`PATHS` (``PATHS.register("name", MyPath)``); it is then built from
``sd.conditioning.paths: {name: {options}}`` and saved with the model (its parameters under ``name.``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..._utils.registry import Registry

__all__ = ["Conditions", "ConditioningPath", "PATHS", "UNetCall"]

#: conditioning paths by name (:class:`ConditioningPath` subclasses, or ``"module:attribute"`` strings)
PATHS = Registry("conditioning path")


@dataclass(frozen=True)
class Conditions:
    """What one UNet call is conditioned on, per sample; every field is ``(B, ...)`` or ``None``.

    Attributes:
        image: DA-CLIP's content embedding ``(B, D)``.
        degradation: DA-CLIP's degradation embedding ``(B, D)``.
        lq_latent: the LQ image's VAE latent ``(B, C, h, w)``.
        keep_daclip: per-sample 0/1 weight of every DA-CLIP path (``None``: all 1): 0 is condition dropout in
            training and the unconditional branch of classifier-free guidance.
        keep_lq: the same for the LQ latent.
    """

    image: Optional[torch.Tensor] = None
    degradation: Optional[torch.Tensor] = None
    lq_latent: Optional[torch.Tensor] = None
    keep_daclip: Optional[torch.Tensor] = None
    keep_lq: Optional[torch.Tensor] = None

    def require(self, name: str, path: str) -> torch.Tensor:
        """The field ``name``, or a one-line error naming the path that reads it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the {path!r} conditioning path reads Conditions.{name}, which is None: pass it "
                             f"(RestorationUNet.denoise(..., Conditions({name}=...)))")
        return value

    def keep(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """``keep_daclip`` or ``keep_lq`` as a ``(B,)`` tensor on ``like``'s device and dtype (ones when unset)."""
        keep = getattr(self, f"keep_{name}")
        if keep is None:
            return torch.ones(like.shape[0], device=like.device, dtype=like.dtype)
        return keep.to(like.device, like.dtype).view(-1)

    @property
    def batch(self) -> Optional[int]:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return value.shape[0]
        return None

    def repeat(self, k: int) -> "Conditions":
        """Every field repeated ``k`` times along the batch (``k`` tiles stacked as ``torch.Tensor.repeat`` does)."""
        if k == 1:
            return self
        return Conditions(**{f.name: None if (v := getattr(self, f.name)) is None else
                             v.repeat(k, *([1] * (v.ndim - 1))) for f in dataclasses.fields(self)})

    @staticmethod
    def cat(parts: List["Conditions"]) -> "Conditions":
        """The batches of ``parts`` concatenated (an unset keep counts as ones where another part sets it)."""
        if len(parts) == 1:
            return parts[0]
        fields: Dict[str, Optional[torch.Tensor]] = {}
        for f in dataclasses.fields(Conditions):
            values = [getattr(p, f.name) for p in parts]
            if all(v is None for v in values):
                fields[f.name] = None
            elif f.name.startswith("keep_"):
                device = next(v for v in values if v is not None).device
                fields[f.name] = torch.cat([torch.ones(p.batch, device=device) if v is None else
                                            v.to(device, torch.float32).view(-1) for p, v in zip(parts, values)])
            elif any(v is None for v in values):
                raise ValueError(f"Conditions.cat: {f.name} is set in some parts only")
            else:
                fields[f.name] = torch.cat(values)
        return Conditions(**fields)


@dataclass
class UNetCall:
    """The arguments of one UNet call, as the paths edit them: ``sample`` (the noisy latents), ``context`` (the
    cross-attention states) and the UNet's other keyword arguments."""

    sample: torch.Tensor
    context: torch.Tensor
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the context positions not yet taken by a path: reserved slots are handed out from the end
    free_end: Optional[int] = None

    def take_slots(self, k: int) -> Tuple[int, int]:
        """``(start, end)`` of the next ``k`` reserved context positions (each path that adds tokens takes its own,
        counting back from the end, in path order)."""
        end = self.context.shape[1] if self.free_end is None else self.free_end
        if k > end:
            raise ValueError(f"the conditioning paths reserve more context positions than the {self.context.shape[1]} "
                             f"the text encoder gives; lower num_tokens")
        self.free_end = end - k
        return end - k, end


class ConditioningPath(nn.Module):
    """One way the conditions enter the UNet. Subclasses set :attr:`name`, build their layers (zero-initialised
    where they meet the UNet, so step 0 is exactly the base model) and implement :meth:`prepare`.

    Args:
        config: the model's :class:`~daclip_lora.restoration.model.RestorationConfig` (``embed_dim``, ...).
        unet: the base UNet, into which the path may install a wrapped module.
        **options: the path's own options (``sd.conditioning``); an unknown one is an error.
    """

    name: ClassVar[str] = ""
    #: whether the UNet's LoRA can be merged into its weights with this path on (a path that changes the LoRA
    #: per image cannot, and its LoRA layers refuse ``merge``)
    lora_mergeable: ClassVar[bool] = True
    #: whether the path is built after the UNet's LoRA is injected (it reads the LoRA layers)
    after_lora: ClassVar[bool] = False

    def __init__(self, config: Any, unet: nn.Module, **options: Any):
        super().__init__()
        if options:
            raise ValueError(f"sd.conditioning.paths.{self.name}: unknown option(s) {sorted(options)}; this path "
                             f"takes none")

    @classmethod
    def context_slots(cls, options: Dict[str, Any]) -> int:
        """How many of the text context's last positions the path reserves (the prompt is truncated before them)."""
        return 0

    def prepare(self, call: UNetCall, conditions: Conditions) -> None:  # required
        """Edit ``call`` (or bind this call's inputs to the path's installed modules) from ``conditions``."""
        raise NotImplementedError

    def merge(self, unet: nn.Module) -> None:
        """Fold what can be folded into the UNet for inference (same outputs); nothing by default."""

    def release(self) -> None:
        """Drop the inputs :meth:`prepare` bound to installed modules (called after an inference call, so a later
        call without its conditions is an error rather than a reuse); nothing by default."""


def owner(module: nn.Module, path: ConditioningPath) -> None:
    """Give an installed wrapper a reference to its path without registering the path as its submodule: the path's
    parameters are the model's (``paths.<name>.*``), not the UNet's, and are saved once."""
    object.__setattr__(module, "path", path)
