"""Degradation-aware conditioning of a Stable Diffusion UNet on DA-CLIP and on the LQ image.

* **Conditioning paths** (:mod:`daclip_lora.restoration.conditioning`): how DA-CLIP's content and degradation
  embeddings and the LQ latent enter the UNet (tokens added to the text context, the LQ latent at a widened
  ``conv_in``, a time-embedding residual, a degradation-modulated LoRA, a degradation-aware output norm). Each is a
  module behind one interface, registered by name and given the conditions explicitly in every call
  (:class:`~daclip_lora.restoration.conditioning.Conditions`); each starts at zero, so step 0 is the base model.
* **LoRA** (peft, through diffusers) on the UNet's attention projections (or ``sd.lora.targets``); trained with
  every path's parameters (and, when set, ``conv_in`` in full and a VAE-encoder LoRA).
* **Objective.** ``diffusion``: the UNet is trained as a conditional denoiser and sampled (steps,
  strength). ``one_step``: the UNet maps the LQ latent, read as ``x_t = sqrt(abar_t) z_LQ`` at a fixed small
  ``t``, to the restored latent in one call (x0 from its prediction), as one-step SD restorers do
  (OSEDiff, Wu et al. 2024); trained on a per-image log-MSE, i.e. on mean PSNR, not on total squared error
  (which lets the large errors of hazy or low-light images drown out JPEG or blur).
* **Fusion head** (optional, :class:`FusionHead`). A UNet trained to regress the GT's latent aims at the VAE's
  reconstruction ``D(E(GT))``, which is below mildly degraded inputs, so the decoded output stays below them
  (the decoder itself could do better from another latent; ``bench/vae_ceiling.py``). The head adds to
  the LQ image the latent's correction ``D(z) - D(z_LQ)`` (decoded restored latent minus decoded LQ latent),
  the VAE round trip ``D(z_LQ) - LQ`` (a smoothing) and the LQ itself, each with its own weight, then applies
  a per-channel colour correction; weights and correction come from DA-CLIP's degradation embedding and global
  statistics of the LQ and of how far the decode moved from it. It starts as the identity (output = LQ) and is
  fitted after the LoRA, on the training images' decodes (:func:`fit_fusion_head`).

Saving and loading: :mod:`daclip_lora.restoration.serialization`; LoRA: :mod:`daclip_lora.restoration.lora`.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .conditioning import PATHS, Conditions, UNetCall, conditioning_paths
from .fusion import FusionHead

logger = logging.getLogger(__name__)

__all__ = ["RestorationConfig", "RestorationUNet"]


@dataclass
class RestorationConfig:
    """Everything needed to rebuild the restoration model on top of its base models."""

    base: str
    daclip_model: str
    daclip_pretrained: Optional[str] = None
    daclip_adapter: Optional[str] = None
    embed_dim: int = 512
    cross_attention_dim: int = 768
    #: the conditioning paths, ``{name: options}`` in build order (:data:`~daclip_lora.restoration.conditioning.PATHS`)
    paths: Dict[str, Dict[str, Any]] = field(default_factory=conditioning_paths)
    prompt: str = ""
    latent_channels: int = 4
    prediction_type: str = "epsilon"
    objective: str = "diffusion"  # or "one_step" (see the module docstring)
    one_step_t: int = 50
    one_step_input: str = "scaled"  # or "raw": z_LQ unscaled at one_step_t (diffusion.one_step_input)
    train_conv_in: bool = False  # conv_in's base weights trained in full (saved in the extras)
    vae_encoder_lora: Optional[Dict[str, Any]] = None  # LoRA on the VAE encoder (the LQ latent is learned)
    fusion: bool = False
    fusion_decoded_lq: bool = True  # the head blends D(z_LQ) (a second decode); False: the LQ image instead
    lora: Dict[str, Any] = field(default_factory=dict)
    text_encoder_lora: Optional[Dict[str, Any]] = None
    #: DA-CLIP's degradation view of a large image: the mean over native-resolution crops of this side (training
    #: records its patch size: the scale DA-CLIP's embeddings were learned at); None: DA-CLIP's input size
    daclip_crop: Optional[int] = None

    def __post_init__(self) -> None:
        for name in self.paths:
            PATHS.get(name)  # an unknown path: one line listing the registered ones

    @property
    def lq_latent(self) -> bool:
        """Whether the UNet reads the LQ latent (its ``conv_in`` is widened)."""
        return "lq_latent" in self.paths

    @property
    def context_slots(self) -> int:
        """The text context's last positions the paths reserve (the prompt is truncated before them)."""
        return sum(PATHS.get(name).context_slots(options) for name, options in self.paths.items())


class RestorationUNet(nn.Module):
    """The trainable restoration model: an SD UNet (+LoRA) with its conditioning paths and the fusion head.

    Args:
        unet: the base UNet (paths install their wrapped modules into it).
        config: the :class:`RestorationConfig`.
        vae_encoder: the base VAE's encoder, required with ``config.vae_encoder_lora`` (its LoRA is trained and saved
            with this model; the VAE keeps using it).
    """

    def __init__(self, unet: nn.Module, config: RestorationConfig, vae_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.config = config
        if unet.config.cross_attention_dim != config.cross_attention_dim:
            raise ValueError(f"UNet cross_attention_dim {unet.config.cross_attention_dim} != "
                             f"{config.cross_attention_dim} expected by the conditioning")
        if config.objective not in ("diffusion", "one_step"):
            raise ValueError(f"restoration objective must be 'diffusion' or 'one_step', got {config.objective!r}")
        self.unet = unet
        if config.vae_encoder_lora and vae_encoder is None:
            raise ValueError("this restoration model has a VAE-encoder LoRA (vae_encoder_lora): pass the base VAE's "
                             "encoder as vae_encoder")
        self.lq_encoder = vae_encoder if config.vae_encoder_lora else None
        self.paths = nn.ModuleDict()
        self.merged = False  # merge_paths() folded paths into the UNet (inference only)
        # Seeded runs draw initial weights in this order (context tokens, fusion head, the other paths): the order
        # of the run behind the README figures, so a seed still reproduces them.
        self._build_paths(after_lora=False, names=("context_tokens",))
        # fitted after the LoRA, never by the training loop's optimiser
        self.fusion = (FusionHead(config.embed_dim, decoded_lq=config.fusion_decoded_lq).requires_grad_(False)
                       if config.fusion else None)
        self._build_paths(after_lora=False)

    def _build_paths(self, after_lora: bool, names: Optional[Sequence[str]] = None) -> None:
        for name, options in self.config.paths.items():
            cls = PATHS.get(name)
            if cls.after_lora == after_lora and name not in self.paths and (names is None or name in names):
                try:
                    inspect.signature(cls).bind(self.config, self.unet, **options)
                except TypeError as e:  # an unknown or missing option
                    raise ValueError(f"sd.conditioning.paths.{name}: {e}; its options: "
                                     f"{list(inspect.signature(cls).parameters)[2:]}") from None
                path = cls(self.config, self.unet, **options)
                path.name = name  # the registry key, in messages and Conditions.require
                self.paths[name] = path.to(next(self.unet.parameters()).device)

    def add_lora_paths(self) -> None:
        """Build the paths that read the UNet's LoRA layers (call once the LoRA is injected; idempotent)."""
        self._build_paths(after_lora=True)

    @property
    def lora_mergeable(self) -> bool:
        """Whether the UNet's LoRA can be merged into its weights (no path changes it per image)."""
        return all(path.lora_mergeable for path in self.paths.values())

    def merge_paths(self) -> None:
        """Fold what the paths can fold into the UNet (inference; same outputs). A merged model is not saved
        (:func:`~daclip_lora.restoration.serialization.save_restoration` refuses it)."""
        for path in self.paths.values():
            path.merge(self.unet)
        self.merged = True

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_hidden: torch.Tensor,
                conditions: Conditions, **unet_kwargs: Any) -> torch.Tensor:
        """The one UNet call of training, validation and inference.

        Args:
            noisy: ``(B, C, h, w)`` noisy latents (already scaled by the scheduler for inference).
            timesteps: ``(B,)`` on the latents' device.
            text_hidden: ``(B, 77, D)`` text-encoder states (the paths add their tokens to the reserved slots).
            conditions: what each path reads (:class:`~daclip_lora.restoration.conditioning.Conditions`).
            **unet_kwargs: the backbone's extra UNet arguments (none for SD 1.x/2.x).

        Returns:
            the UNet's prediction (of the scheduler's ``prediction_type``), shaped like ``noisy``.
        """
        call = UNetCall(noisy, text_hidden, dict(unet_kwargs))
        for path in self.paths.values():
            path.prepare(call, conditions)
        try:
            return self.unet(call.sample, timesteps, encoder_hidden_states=call.context, return_dict=False,
                             **call.kwargs)[0]
        finally:
            if not torch.is_grad_enabled():  # under autograd, checkpointed blocks re-read them in backward
                for path in self.paths.values():
                    path.release()

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_hidden: torch.Tensor,
                conditions: Conditions, **unet_kwargs: Any) -> torch.Tensor:
        """Training entry point (one call, DDP-friendly): :meth:`denoise`."""
        return self.denoise(noisy, timesteps, text_hidden, conditions, **unet_kwargs)

    def extras_state_dict(self) -> Dict[str, torch.Tensor]:
        """Every path's parameters (``<path>.*``), the fusion head (``fusion.*``), the VAE-encoder LoRA
        (``vae_encoder.*``) and, when trained in full, ``conv_in``'s base weight and bias (``conv_in.*``)."""
        out = {f"{name}.{k}": v for name, path in self.paths.items() for k, v in path.state_dict().items()}
        if self.fusion is not None:
            out.update({f"fusion.{k}": v for k, v in self.fusion.state_dict().items()})
        if self.lq_encoder is not None:
            out.update({f"vae_encoder.{k}": v for k, v in self.lq_encoder.state_dict().items() if "lora_" in k})
        if self.config.train_conv_in:
            out.update({f"conv_in.{k}": v for k, v in self.base_conv_in.state_dict().items()})
        return out

    @property
    def base_conv_in(self) -> nn.Conv2d:
        """The UNet's own first convolution (inside the LQ path's wrapper when there is one)."""
        conv = self.unet.conv_in
        return getattr(conv, "base", conv)

    def fusion_state(self) -> Optional[Dict[str, Any]]:
        """The fusion head's metadata as ``restoration.json`` stores it (``None`` without a head)."""
        return None if self.fusion is None else {"fitted": bool(self.fusion.fitted)}

    def load_extras(self, state: Dict[str, torch.Tensor], fusion_state: Optional[Dict[str, Any]] = None) -> None:
        """Load :meth:`extras_state_dict` weights (strictly: a missing or unexpected tensor is an error naming it)
        and ``fusion_state`` (:meth:`fusion_state` as saved)."""
        parts: Dict[str, Optional[nn.Module]] = {**self.paths, "fusion": self.fusion}
        if self.lq_encoder is not None:
            parts["vae_encoder"] = self.lq_encoder
        if self.config.train_conv_in:
            parts["conv_in"] = self.base_conv_in
        unknown = sorted({k.split(".", 1)[0] for k in state} - {n for n, m in parts.items() if m is not None})
        if unknown:
            raise ValueError(f"restoration extras hold weights of {unknown}, which this model's restoration.json does "
                             f"not build; re-save the folder with the trainer that wrote it")
        for name, module in parts.items():
            if module is not None:
                _load_part(name, module, _prefixed(state, f"{name}."), lora_only=name == "vae_encoder")
        if self.fusion is not None:
            self.fusion.fitted = bool((fusion_state or {}).get("fitted", False))


def _load_part(name: str, module: nn.Module, weights: Dict[str, torch.Tensor], lora_only: bool = False) -> None:
    """``module.load_state_dict(weights)``, all of them (only its LoRA tensors when ``lora_only``), or one line."""
    own = module.state_dict()
    expected = {k for k in own if not lora_only or "lora_" in k}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    shapes = sorted(k for k in set(weights) & expected if tuple(weights[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        detail = (f"{len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}"
                  if missing or unexpected else
                  f"{shapes[0]} is {tuple(weights[shapes[0]].shape)}, the model's {tuple(own[shapes[0]].shape)}")
        raise ValueError(f"restoration extras: the {name!r} weights do not fit this model ({detail}); re-save the "
                         f"folder with the trainer that wrote it")
    module.load_state_dict(weights, strict=not lora_only)


def _prefixed(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
