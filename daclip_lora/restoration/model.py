"""Degradation-aware conditioning of a Stable Diffusion UNet on DA-CLIP and on the LQ image.

* **DA-CLIP tokens.** A small projector maps DA-CLIP's content embedding and degradation embedding to
  ``num_tokens`` tokens each of the UNet's ``cross_attention_dim``. They are *added* to the last
  ``K = num_tokens x (#embeddings)`` positions of the text encoder's 77 hidden states (the padding slots
  of SD's fixed-length prompt; prompts are truncated to leave them free), and the projector's last layer
  starts at zero. Appending K new tokens instead would change every cross-attention softmax even when
  they are zero (zero keys still take attention mass), so step 0 would differ from the base model; the
  residual on reserved slots makes step 0 *exactly* the base model and keeps SD's sequence length, so
  the UNet, its LoRA file and diffusers' stock attention processors are unchanged.
* **LQ latent.** ``conv_in`` is widened from 4 to 8 input channels: the LQ image's VAE latent is
  concatenated to the noisy latent, and the new channels' weights start at zero.
* **LoRA** (peft, through diffusers) on the UNet's attention projections (or ``sd.lora.targets``); only
  LoRA, the projector and the new ``conv_in`` channels are trained.
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

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from .fusion import FusionHead
from .modulation import LoraModulation, lora_a_modules
from .output_norm import DegradationOutputNorm

logger = logging.getLogger(__name__)

__all__ = ["ContextProjector", "DaclipConditioner", "DegradationTimeEmbedding", "LQConvIn", "RestorationConfig",
           "RestorationUNet"]


@dataclass
class RestorationConfig:
    """Everything needed to rebuild the restoration model on top of its base models."""

    base: str
    daclip_model: str
    daclip_pretrained: Optional[str] = None
    daclip_adapter: Optional[str] = None
    embed_dim: int = 512
    cross_attention_dim: int = 768
    num_tokens: int = 4
    image_context: bool = True
    degra_context: bool = True
    lq_latent: bool = True
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
    time_embedding: bool = False  # DA-CLIP's degradation embedding added to the UNet's time embedding
    modulated_lora: bool = False  # every LoRA layer's B·M(e)·A, M from the degradation embedding (modulation.py)
    output_norm: bool = False  # conv_norm_out scaled and shifted from that embedding and its input's statistics
    #: DA-CLIP's degradation view of a large image: the mean over native-resolution crops of this side (training
    #: records its patch size: the scale DA-CLIP's embeddings were learned at); None: DA-CLIP's input size
    daclip_crop: Optional[int] = None

    @property
    def uses_time_labels(self) -> bool:
        """Whether every UNet call takes ``class_labels = [degradation embedding, keep]``."""
        return self.time_embedding or self.modulated_lora or self.output_norm

    @property
    def context_slots(self) -> int:
        return self.num_tokens * (int(self.image_context) + int(self.degra_context))


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


class DaclipConditioner(nn.Module):
    """Adds projected DA-CLIP tokens to the last slots of the text context."""

    def __init__(self, config: RestorationConfig):
        super().__init__()
        self.projectors = nn.ModuleDict()
        if config.image_context:
            self.projectors["image"] = ContextProjector(config.embed_dim, config.cross_attention_dim,
                                                        config.num_tokens)
        if config.degra_context:
            self.projectors["degra"] = ContextProjector(config.embed_dim, config.cross_attention_dim,
                                                        config.num_tokens)

    def forward(self, text_hidden: torch.Tensor, image_emb: Optional[torch.Tensor],
                degra_emb: Optional[torch.Tensor], keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not len(self.projectors):
            return text_hidden
        parts = []
        if "image" in self.projectors:
            parts.append(self.projectors["image"](image_emb.to(text_hidden.dtype)))
        if "degra" in self.projectors:
            parts.append(self.projectors["degra"](degra_emb.to(text_hidden.dtype)))
        tokens = torch.cat(parts, dim=1)
        if keep is not None:  # condition dropout: per-sample 0/1
            tokens = tokens * keep.to(tokens.dtype).view(-1, 1, 1)
        k = tokens.shape[1]
        return torch.cat([text_hidden[:, :-k], text_hidden[:, -k:] + tokens], dim=1)



class LQConvIn(nn.Module):
    """``conv_in`` widened to take ``[noisy latent, LQ latent]``: base conv + zero-initialised LQ conv."""

    def __init__(self, conv_in: nn.Conv2d, extra_channels: int):
        super().__init__()
        self.base = conv_in
        self.base_channels = conv_in.in_channels
        self.lq = nn.Conv2d(extra_channels, conv_in.out_channels, conv_in.kernel_size, conv_in.stride,
                            conv_in.padding, bias=False)
        nn.init.zeros_(self.lq.weight)
        # diffusers reads conv_in.in_channels / weight.dtype in places
        self.in_channels = self.base_channels + extra_channels
        self.out_channels = conv_in.out_channels

    @property
    def weight(self) -> torch.Tensor:  # the equivalent widened conv weight
        return torch.cat([self.base.weight, self.lq.weight.to(self.base.weight.dtype)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.base_channels
        return self.base(x[:, :c]) + self.lq(x[:, c:].to(self.lq.weight.dtype)).to(x.dtype)

    def fused(self) -> nn.Conv2d:
        """One plain ``Conv2d`` over all input channels, equivalent to this module (for inference)."""
        b = self.base
        conv = nn.Conv2d(self.in_channels, self.out_channels, b.kernel_size, b.stride, b.padding,
                         bias=b.bias is not None).to(b.weight.device, b.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if b.bias is not None:
                conv.bias.copy_(b.bias)
        return conv.requires_grad_(False)


class DegradationTimeEmbedding(nn.Module):
    """DA-CLIP's degradation embedding -> a residual of the UNet's time embedding, which every ResBlock receives
    (DA-CLIP's own UIR network conditions its ResBlocks this way).

    Installed as the UNet's ``class_embedding`` (diffusers adds ``class_embedding(class_labels)`` to the time
    embedding), so the UNet stays a stock ``UNet2DConditionModel``. ``class_labels`` is
    ``[degradation embedding, keep]``: the last column scales the residual per sample (0: condition dropped, the
    unconditional branch of guidance). The output layer starts at zero: step 0 is exactly the base model.
    """

    def __init__(self, embed_dim: int, time_embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear_1 = nn.Linear(embed_dim, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    @staticmethod
    def labels(degra_emb: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``class_labels`` for the UNet call: the embedding with its per-sample keep weight (default 1)."""
        k = torch.ones(degra_emb.shape[0], device=degra_emb.device) if keep is None else keep
        return torch.cat([degra_emb.float(), k.to(degra_emb.device, torch.float32).view(-1, 1)], dim=1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        emb, keep = labels[:, :-1], labels[:, -1:]
        p = self.linear_1.weight
        return self.linear_2(self.act(self.linear_1(self.norm(emb.to(p.dtype))))) * keep.to(p.dtype)


class RestorationUNet(nn.Module):
    """The trainable restoration model: SD UNet (+LoRA) with DA-CLIP tokens and the LQ latent."""

    def __init__(self, unet: nn.Module, config: RestorationConfig, vae_encoder: Optional[nn.Module] = None):
        """``vae_encoder``: the base VAE's encoder, required with ``config.vae_encoder_lora`` (its LoRA is trained
        and saved with this model; the VAE keeps using it)."""
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
        self.conditioner = DaclipConditioner(config)
        self.modulation: Optional[LoraModulation] = None  # built by attach_modulation, once LoRA is on the UNet
        # fitted after the LoRA, never by the training loop's optimiser
        self.fusion = (FusionHead(config.embed_dim, decoded_lq=config.fusion_decoded_lq).requires_grad_(False)
                       if config.fusion else None)
        if config.lq_latent:
            unet.conv_in = LQConvIn(unet.conv_in, config.latent_channels)
        if config.time_embedding:
            if getattr(unet, "class_embedding", None) is not None:
                raise ValueError("sd.conditioning.time_embedding needs a UNet without a class embedding; this base "
                                 "already has one (class_embed_type is set)")
            unet.class_embedding = DegradationTimeEmbedding(config.embed_dim, unet.time_embedding.linear_2.out_features)
        if config.output_norm:
            if not isinstance(getattr(unet, "conv_norm_out", None), nn.GroupNorm):
                raise ValueError("sd.conditioning.output_norm needs a UNet with a GroupNorm conv_norm_out (SD 1.x/2.x "
                                 "and the tiny bases have one)")
            unet.conv_norm_out = DegradationOutputNorm(unet.conv_norm_out, config.embed_dim)
            unet.conv_norm_out.attach(unet)

    def attach_modulation(self) -> None:
        """With ``config.modulated_lora``, hook the UNet's LoRA layers (call once, after the LoRA is injected)."""
        if not self.config.modulated_lora or self.modulation is not None:
            return
        layers = lora_a_modules(self.unet)
        rank = int(self.config.lora.get("rank", 0) or 0)
        self.modulation = LoraModulation(self.config.embed_dim, rank, len(layers))
        self.modulation.to(next(self.unet.parameters()).device)
        self.modulation.attach(self.unet)

    def time_labels(self, degra_emb: Optional[torch.Tensor], keep: Optional[torch.Tensor] = None
                    ) -> Optional[torch.Tensor]:
        """The UNet's per-sample ``class_labels`` ``[degradation embedding, keep]`` read by the time-embedding path
        and the modulated LoRA (``None`` when both are off)."""
        if not self.config.uses_time_labels:
            return None
        if degra_emb is None:
            raise ValueError("this restoration model conditions its UNet on DA-CLIP's degradation embedding "
                             "(time_embedding or modulated_lora): pass degra_emb")
        return DegradationTimeEmbedding.labels(degra_emb, keep)

    def context(self, text_hidden, image_emb=None, degra_emb=None, keep_daclip=None) -> torch.Tensor:
        return self.conditioner(text_hidden, image_emb, degra_emb, keep_daclip)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                lq_latents: Optional[torch.Tensor] = None, keep_lq: Optional[torch.Tensor] = None,
                time_labels: Optional[torch.Tensor] = None, **unet_kwargs: Any) -> torch.Tensor:
        """The one UNet call of training, validation and inference.

        Args:
            noisy: ``(B, C, h, w)`` noisy latents (already scaled by the scheduler for inference).
            timesteps: ``(B,)`` on the latents' device.
            context: ``(B, 77, D)`` from :meth:`context`.
            lq_latents: ``(B, C, h, w)`` VAE latents of the LQ image (required when ``config.lq_latent``).
            keep_lq: per-sample 0/1 (condition dropout of the LQ latent during training).
            time_labels: from :meth:`time_labels` (required when ``config.time_embedding``).
            **unet_kwargs: the backbone's extra UNet arguments (none for SD 1.x/2.x).

        Returns:
            the UNet's prediction (of the scheduler's ``prediction_type``), shaped like ``noisy``.
        """
        if self.config.lq_latent:
            if lq_latents is None:
                raise ValueError("this restoration model conditions on the LQ latent (lq_latent: true): pass "
                                 "lq_latents")
            if keep_lq is not None:
                lq_latents = lq_latents * keep_lq.to(lq_latents.dtype).view(-1, 1, 1, 1)
            noisy = torch.cat([noisy, lq_latents.to(noisy.dtype)], dim=1)
        if self.config.uses_time_labels:
            if time_labels is None:
                raise ValueError("this restoration model conditions its UNet on the degradation embedding "
                                 "(time_embedding or modulated_lora): pass time_labels=model.time_labels(degra_emb)")
            unet_kwargs = {**unet_kwargs, "class_labels": time_labels}
        return self.unet(noisy, timesteps, encoder_hidden_states=context, return_dict=False, **unet_kwargs)[0]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_hidden: torch.Tensor,
                image_emb: Optional[torch.Tensor] = None, degra_emb: Optional[torch.Tensor] = None,
                lq_latents: Optional[torch.Tensor] = None, keep_daclip: Optional[torch.Tensor] = None,
                keep_lq: Optional[torch.Tensor] = None, **unet_kwargs: Any) -> torch.Tensor:
        """Training entry point (one call, DDP-friendly): context from the embeddings, then :meth:`denoise`."""
        context = self.context(text_hidden, image_emb, degra_emb, keep_daclip)
        return self.denoise(noisy, timesteps, context, lq_latents, keep_lq,
                            time_labels=self.time_labels(degra_emb, keep_daclip), **unet_kwargs)

    def extras_state_dict(self) -> Dict[str, torch.Tensor]:
        """Projector, fusion head, the DA-CLIP paths' weights, the VAE-encoder LoRA and the widened (or trained)
        ``conv_in`` (full weight and bias, as a plain conv has)."""
        c = self.config
        parts = [("conditioner.", self.conditioner, None), ("fusion.", self.fusion, None),
                 ("time_embedding.", self.unet.class_embedding if c.time_embedding else None, None),
                 ("modulation.", self.modulation, None),
                 # the output norm's new layers only (its base norm is the base model's); the encoder's LoRA only
                 ("output_norm.", self.unet.conv_norm_out if c.output_norm else None,
                  lambda k: not k.startswith("norm.")),
                 ("vae_encoder.", self.lq_encoder, lambda k: "lora_" in k)]
        out = {f"{prefix}{k}": v for prefix, module, keep in parts if module is not None
               for k, v in module.state_dict().items() if keep is None or keep(k)}
        if c.lq_latent or c.train_conv_in:
            out.update(self._conv_in_state())
        return out

    def _conv_in_state(self) -> Dict[str, torch.Tensor]:
        """``conv_in`` as one plain conv's weight (and bias): widened with the LQ channels, or trained in full."""
        conv = self.unet.conv_in
        out = {"conv_in.weight": conv.weight.detach()}
        bias = conv.base.bias if isinstance(conv, LQConvIn) else conv.bias
        if bias is not None:
            out["conv_in.bias"] = bias.detach()
        return out

    def fusion_state(self) -> Optional[Dict[str, Any]]:
        """The fusion head's metadata as ``restoration.json`` stores it (``None`` without a head)."""
        if self.fusion is None:
            return None
        return {"fitted": bool(self.fusion.fitted), "coordinates": self.fusion.version}

    def load_extras(self, state: Dict[str, torch.Tensor], fusion_state: Optional[Dict[str, Any]] = None) -> None:
        """Load :meth:`extras_state_dict` weights; ``fusion_state`` is :meth:`fusion_state` as saved (``None``:
        a format-1 folder, whose ``fusion.fitted``/``fusion.coordinates`` tensors are read instead)."""
        missing, unexpected = self.conditioner.load_state_dict(_prefixed(state, "conditioner."), strict=False)
        if missing or unexpected:
            raise ValueError(f"restoration extras do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if self.fusion is not None:
            self._load_fusion(_prefixed(state, "fusion."), fusion_state)
        loaders = ((self.config.time_embedding, "time_embedding.", self._load_time_embedding),
                   (self.config.output_norm, "output_norm.", self._load_output_norm),
                   (self.config.modulated_lora, "modulation.", self._load_modulation))
        for enabled, prefix, load in loaders:
            if enabled:
                load(_prefixed(state, prefix))
        if self.config.lq_latent or self.config.train_conv_in:
            self._load_conv_in(state)
        if self.lq_encoder is not None:
            self._load_vae_encoder(_prefixed(state, "vae_encoder."))

    def _load_vae_encoder(self, weights: Dict[str, torch.Tensor]) -> None:
        expected = {k for k in self.lq_encoder.state_dict() if "lora_" in k}
        if not expected:
            raise ValueError("vae_encoder_lora is set but the VAE encoder has no LoRA layers; load the LoRA first "
                             "(load_restoration does)")
        if set(weights) != expected:
            raise ValueError(f"the VAE-encoder LoRA weights do not fit: {len(expected - set(weights))} missing, "
                             f"{len(set(weights) - expected)} unexpected; re-save the folder with the trainer that "
                             f"wrote it")
        self.lq_encoder.load_state_dict(weights, strict=False)

    def _load_time_embedding(self, weights: Dict[str, torch.Tensor]) -> None:
        if not weights:
            raise ValueError("restoration.json has time_embedding: true but the extras hold no time_embedding.* "
                             "weights; re-save the folder with the trainer that wrote it")
        self.unet.class_embedding.load_state_dict(weights)

    def _load_fusion(self, weights: Dict[str, torch.Tensor], meta: Optional[Dict[str, Any]]) -> None:
        if not weights:
            raise ValueError("restoration.json has fusion: true but the extras hold no fusion head weights "
                             "(fusion.*); re-save the folder with the trainer that wrote it")
        if meta is None:  # format 1: metadata as float tensors among the weights
            meta = {"fitted": bool(weights.pop("fitted", torch.tensor(1.0)).item() > 0),
                    "coordinates": int(weights.pop("coordinates", torch.tensor(1.0)).item())}
        coordinates = int(meta.get("coordinates", 1))
        if coordinates > FusionHead.COORDINATES:
            raise ValueError(f"the fusion head was saved with blend coordinates v{coordinates}; this "
                             f"daclip_lora reads up to v{FusionHead.COORDINATES}: upgrade daclip_lora")
        if coordinates < self.fusion.version:  # an older head: its own layout (inputs and colour correction)
            self.fusion = FusionHead(self.config.embed_dim, decoded_lq=self.config.fusion_decoded_lq,
                                     version=2).requires_grad_(False).to(self.fusion.fc1.weight.device)
        if coordinates == 1:
            weights = FusionHead.legacy_state(weights)
        self.fusion.load_state_dict(weights)
        self.fusion.fitted = bool(meta.get("fitted", True))

    def _load_output_norm(self, weights: Dict[str, torch.Tensor]) -> None:
        if not weights:
            raise ValueError("restoration.json has output_norm: true but the extras hold no output_norm.* weights; "
                             "re-save the folder with the trainer that wrote it")
        missing, unexpected = self.unet.conv_norm_out.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("norm.")]
        if missing or unexpected:
            raise ValueError(f"output_norm weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def _load_modulation(self, weights: Dict[str, torch.Tensor]) -> None:
        if self.modulation is None:
            raise ValueError("modulated_lora: true but the UNet's LoRA is not attached yet; load the LoRA first "
                             "(load_restoration does)")
        if not weights:
            raise ValueError("restoration.json has modulated_lora: true but the extras hold no modulation.* "
                             "weights; re-save the folder with the trainer that wrote it")
        self.modulation.load_state_dict(weights)

    def _load_conv_in(self, state: Dict[str, torch.Tensor]) -> None:
        if "conv_in.weight" not in state:
            raise ValueError("restoration extras lack conv_in.weight (was the model trained without lq_latent?)")
        conv = self.unet.conv_in
        w = state["conv_in.weight"]
        if w.shape[1] != conv.in_channels or w.shape[0] != conv.out_channels:
            raise ValueError(f"conv_in.weight is {tuple(w.shape)}, the model needs "
                             f"({conv.out_channels}, {conv.in_channels}, ...)")
        base = conv.base if isinstance(conv, LQConvIn) else conv
        with torch.no_grad():
            base.weight.copy_(w[:, :base.in_channels])
            if isinstance(conv, LQConvIn):
                conv.lq.weight.copy_(w[:, conv.base_channels:])
            if "conv_in.bias" in state and base.bias is not None:
                base.bias.copy_(state["conv_in.bias"])


def _prefixed(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
