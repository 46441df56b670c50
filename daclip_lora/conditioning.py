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
* **Fusion head** (optional, :class:`FusionHead`). The VAE cannot reproduce an image better than its own
  reconstruction error, so decoding alone caps the output below mildly degraded inputs. The head adds to
  the LQ image the latent's correction ``D(z) - D(z_LQ)`` (decoded restored latent minus decoded LQ latent),
  the VAE round trip ``D(z_LQ) - LQ`` (a smoothing) and the LQ itself, each with its own weight, then applies
  a per-channel affine colour correction; weights and correction come from DA-CLIP's degradation and content
  embeddings and the LQ's colour statistics. It starts as the identity (output = LQ) and is fitted after the
  LoRA, on the training images' decodes (:func:`fit_fusion_head`).

Saved outputs (a folder): ``pytorch_lora_weights.safetensors`` (diffusers format, LoRA config in its
metadata, loadable by ``StableDiffusionPipeline.load_lora_weights``), ``restoration_extras.safetensors``
(projector and the widened ``conv_in``) and ``restoration.json`` (how to rebuild the model).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .backbone import SDBackbone
from .lora_spec import LoraSpec, inject_lora

logger = logging.getLogger(__name__)

__all__ = ["ContextProjector", "DaclipConditioner", "FusionHead", "fit_fusion_head", "LQConvIn", "RestorationConfig", "RestorationUNet",
           "UNET_LORA_TARGETS", "add_unet_lora", "add_text_encoder_lora", "save_restoration", "load_restoration",
           "read_restoration_config", "lora_spec", "LORA_WEIGHT_NAME", "TEXT_ENCODER_LORA_TARGETS"]

UNET_LORA_TARGETS = SDBackbone.unet_lora_targets
TEXT_ENCODER_LORA_TARGETS = SDBackbone.text_encoder_lora_targets
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EXTRAS_NAME = "restoration_extras.safetensors"
CONFIG_NAME = "restoration.json"


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
    fusion: bool = False
    lora: Dict[str, Any] = field(default_factory=dict)
    text_encoder_lora: Optional[Dict[str, Any]] = None
    version: int = 1

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


class FusionHead(nn.Module):
    """Degradation-aware output fusion: ``a * (c1 LQ + c2 D(z) + c3 D(z_LQ)) + b`` per image.

    The blend and the per-channel affine ``(a, b)`` are predicted from DA-CLIP's content and degradation
    embeddings and the LQ image's per-channel mean and standard deviation. The network predicts the blend in
    residual coordinates, ``LQ + w1 (D(z) - D(z_LQ)) + w2 (D(z_LQ) - LQ) + w3 LQ``, i.e.
    ``(c1, c2, c3) = (1 - w2 + w3, w1, w2 - w1)``: the same family of blends, but the fit (Adam, per
    coordinate) reaches "add the latent's correction" (``w1``) directly. In the plain ``(c1, c2, c3)``
    coordinates it settled on smoothing blends and left the correction unused where it helps (raindrops:
    +1.0 dB from the correction alone, the head below the input). The last layer starts at zero, where
    ``(w, a, b) = (0, 1, 0)``: the output is the LQ image.
    """

    #: version of the blend's coordinates in saved weights (extras key ``fusion.coordinates``); folders saved
    #: before it existed hold plain ``(c1 - 1, c2, c3)`` outputs and are converted exactly on load
    COORDINATES = 2

    def __init__(self, embed_dim: int, hidden: int = 64, channels: int = 3):
        super().__init__()
        self.channels = channels
        self.norm = nn.LayerNorm(2 * embed_dim)
        self.fc1 = nn.Linear(2 * embed_dim + 2 * channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 3 + 2 * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        # set by fit_fusion_head (and saved); until then the pipeline decodes without the head (training-time
        # validation). A Python flag, not a buffer: reading it never syncs a device
        self.fitted = False

    def coefficients(self, lq: torch.Tensor, image_emb: torch.Tensor, degra_emb: torch.Tensor) -> torch.Tensor:
        """``(B, 3 + 2C)``: blend weights, colour scales and offsets (at their identity values when untrained)."""
        p = self.fc1.weight
        stats = torch.cat([lq.mean((2, 3)), lq.std((2, 3))], dim=1).to(p.dtype)
        emb = self.norm(torch.cat([image_emb, degra_emb], dim=1).to(p.dtype))
        h = self.fc2(self.act(self.fc1(torch.cat([emb, stats], dim=1))))
        w1, w2, w3 = h[:, 0:1], h[:, 1:2], h[:, 2:3]
        blend = torch.cat([1 + w3 - w2, w1, w2 - w1], dim=1)
        return torch.cat([blend, 1 + h[:, 3:3 + self.channels], h[:, 3 + self.channels:]], dim=1)

    @staticmethod
    def legacy_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Convert a state dict saved with plain blend outputs ``(c1 - 1, c2, c3)`` to residual coordinates
        (exact: ``w1 = c2, w2 = c2 + c3, w3 = c1 + c2 + c3 - 1`` on ``fc2``'s first three rows)."""
        out = dict(state)
        for key in ("fc2.weight", "fc2.bias"):
            v = state[key].clone()
            r1, r2, r3 = state[key][0], state[key][1], state[key][2]
            v[0], v[1], v[2] = r2, r2 + r3, r1 + r2 + r3
            out[key] = v
        return out

    def forward(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor, image_emb: torch.Tensor,
                degra_emb: torch.Tensor) -> torch.Tensor:
        k = self.coefficients(lq, image_emb, degra_emb).float().view(lq.shape[0], -1, 1, 1)
        c = self.channels
        mixed = k[:, 0:1] * lq + k[:, 1:2] * decoded + k[:, 2:3] * decoded_lq
        return k[:, 3:3 + c] * mixed + k[:, 3 + c:]


def fit_fusion_head(head: FusionHead, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor,
                    gt: torch.Tensor, image_emb: torch.Tensor, degra_emb: torch.Tensor, steps: int = 400,
                    lr: float = 3e-3, batch: int = 128, seed: int = 0) -> Dict[str, float]:
    """Fit ``head`` on training images (tensors ``(N, 3, H, W)`` in [0, 1] and ``(N, E)`` embeddings).

    Loss: mean over images of ``log(MSE)`` (maximises mean PSNR). Deterministic for a given ``seed``.
    Returns the training set's mean PSNR of the LQ, of ``LQ + D(z) - D(z_LQ)`` and of the head's output.
    """
    n = lq.shape[0]
    if n == 0:
        raise ValueError("fit_fusion_head needs at least one training image")
    device = next(head.parameters()).device
    head.requires_grad_(True).train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def log_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.log((out.float() - target.float()).pow(2).mean((1, 2, 3)) + 1e-8)

    def take(idx: torch.Tensor):
        return [t[idx].to(device, torch.float32) for t in (lq, decoded, decoded_lq, gt, image_emb, degra_emb)]

    for step in range(steps):
        idx = torch.randperm(n, generator=gen)[:batch]
        x, d, dl, y, ie, de = take(idx)
        for group in opt.param_groups:  # cosine decay
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = log_mse(head(x, d, dl, ie, de), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False).eval()
    head.fitted = True
    psnr = lambda v: float((-10 / math.log(10)) * v.mean())  # noqa: E731
    with torch.no_grad():
        lq_l, res_l, out_l = [], [], []
        for i in range(0, n, batch):
            x, d, dl, y, ie, de = take(torch.arange(i, min(n, i + batch)))
            lq_l.append(log_mse(x, y))
            res_l.append(log_mse((x + d - dl).clamp(0, 1), y))
            out_l.append(log_mse(head(x, d, dl, ie, de).clamp(0, 1), y))
    return {"psnr_lq": psnr(torch.cat(lq_l)), "psnr_residual": psnr(torch.cat(res_l)),
            "psnr_fused": psnr(torch.cat(out_l))}


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


class RestorationUNet(nn.Module):
    """The trainable restoration model: SD UNet (+LoRA) with DA-CLIP tokens and the LQ latent."""

    def __init__(self, unet: nn.Module, config: RestorationConfig):
        super().__init__()
        self.config = config
        if unet.config.cross_attention_dim != config.cross_attention_dim:
            raise ValueError(f"UNet cross_attention_dim {unet.config.cross_attention_dim} != "
                             f"{config.cross_attention_dim} expected by the conditioning")
        if config.objective not in ("diffusion", "one_step"):
            raise ValueError(f"restoration objective must be 'diffusion' or 'one_step', got {config.objective!r}")
        self.unet = unet
        self.conditioner = DaclipConditioner(config)
        # fitted after the LoRA, never by the training loop's optimiser
        self.fusion = FusionHead(config.embed_dim).requires_grad_(False) if config.fusion else None
        if config.lq_latent:
            unet.conv_in = LQConvIn(unet.conv_in, config.latent_channels)

    def context(self, text_hidden, image_emb=None, degra_emb=None, keep_daclip=None) -> torch.Tensor:
        return self.conditioner(text_hidden, image_emb, degra_emb, keep_daclip)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                lq_latents: Optional[torch.Tensor] = None, keep_lq: Optional[torch.Tensor] = None,
                **unet_kwargs: Any) -> torch.Tensor:
        """The one UNet call of training, validation and inference.

        Args:
            noisy: ``(B, C, h, w)`` noisy latents (already scaled by the scheduler for inference).
            timesteps: ``(B,)`` on the latents' device.
            context: ``(B, 77, D)`` from :meth:`context`.
            lq_latents: ``(B, C, h, w)`` VAE latents of the LQ image (required when ``config.lq_latent``).
            keep_lq: per-sample 0/1 (condition dropout of the LQ latent during training).
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
        return self.unet(noisy, timesteps, encoder_hidden_states=context, return_dict=False, **unet_kwargs)[0]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_hidden: torch.Tensor,
                image_emb: Optional[torch.Tensor] = None, degra_emb: Optional[torch.Tensor] = None,
                lq_latents: Optional[torch.Tensor] = None, keep_daclip: Optional[torch.Tensor] = None,
                keep_lq: Optional[torch.Tensor] = None, **unet_kwargs: Any) -> torch.Tensor:
        """Training entry point (one call, DDP-friendly): context from the embeddings, then :meth:`denoise`."""
        context = self.context(text_hidden, image_emb, degra_emb, keep_daclip)
        return self.denoise(noisy, timesteps, context, lq_latents, keep_lq, **unet_kwargs)

    def extras_state_dict(self) -> Dict[str, torch.Tensor]:
        """Projector weights and the widened ``conv_in`` (full weight and bias, as a plain conv would have)."""
        out = {f"conditioner.{k}": v for k, v in self.conditioner.state_dict().items()}
        if self.fusion is not None:
            out.update({f"fusion.{k}": v for k, v in self.fusion.state_dict().items()})
            out["fusion.fitted"] = torch.tensor(float(self.fusion.fitted))
            out["fusion.coordinates"] = torch.tensor(float(FusionHead.COORDINATES))
        if self.config.lq_latent:
            conv = self.unet.conv_in
            out["conv_in.weight"] = conv.weight.detach()
            if conv.base.bias is not None:
                out["conv_in.bias"] = conv.base.bias.detach()
        return out

    def load_extras(self, state: Dict[str, torch.Tensor]) -> None:
        cond = {k[len("conditioner."):]: v for k, v in state.items() if k.startswith("conditioner.")}
        missing, unexpected = self.conditioner.load_state_dict(cond, strict=False)
        if missing or unexpected:
            raise ValueError(f"restoration extras do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if self.fusion is not None:
            fusion = {k[len("fusion."):]: v for k, v in state.items() if k.startswith("fusion.")}
            if not fusion:
                raise ValueError("restoration.json has fusion: true but the extras hold no fusion head weights "
                                 "(fusion.*); re-save the folder with the trainer that wrote it")
            fitted = fusion.pop("fitted", torch.tensor(1.0))
            coordinates = int(fusion.pop("coordinates", torch.tensor(1.0)).item())
            if coordinates > FusionHead.COORDINATES:
                raise ValueError(f"the fusion head was saved with blend coordinates v{coordinates}; this "
                                 f"daclip_lora reads up to v{FusionHead.COORDINATES}: upgrade daclip_lora")
            if coordinates == 1:
                fusion = FusionHead.legacy_state(fusion)
            self.fusion.load_state_dict(fusion)
            self.fusion.fitted = bool(fitted.item() > 0)
        if self.config.lq_latent:
            if "conv_in.weight" not in state:
                raise ValueError("restoration extras lack conv_in.weight (was the model trained without lq_latent?)")
            conv = self.unet.conv_in
            w = state["conv_in.weight"]
            if w.shape[1] != conv.in_channels or w.shape[0] != conv.out_channels:
                raise ValueError(f"conv_in.weight is {tuple(w.shape)}, the model needs "
                                 f"({conv.out_channels}, {conv.in_channels}, ...)")
            with torch.no_grad():
                conv.base.weight.copy_(w[:, :conv.base_channels])
                conv.lq.weight.copy_(w[:, conv.base_channels:])
                if "conv_in.bias" in state and conv.base.bias is not None:
                    conv.base.bias.copy_(state["conv_in.bias"])


def lora_spec(options: Any) -> Dict[str, Any]:
    """The LoRA settings of a :class:`~daclip_lora.lora_spec.LoraSpec` (or mapping), as stored in restoration.json."""
    return LoraSpec.coerce(options).to_dict()


def add_unet_lora(unet: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None], config: Any = None) -> None:
    """Freeze the UNet and add a LoRA adapter (peft) on the attention projections.

    ``config`` (a peft ``LoraConfig``, e.g. read from a saved file's metadata) takes precedence over ``spec``.
    """
    unet.requires_grad_(False)
    if config is None:
        spec = LoraSpec.coerce(spec, "sd.lora").validate("sd.lora", allow_blocks=False)
        config = spec.peft_config(spec.targets or UNET_LORA_TARGETS)
    try:
        inject_lora(unet, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in unet.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"UNet LoRA targets {list(config.target_modules)} match no module ({e}); "
                         f"linear layer names in this UNet include: {', '.join(names[:12])}") from None
    if isinstance(unet.conv_in, LQConvIn):  # the new LQ channels are trained, the base conv_in is not
        unet.conv_in.lq.requires_grad_(True)


def add_text_encoder_lora(text_encoder: nn.Module, spec: Union[LoraSpec, Dict[str, Any], None]) -> None:
    """Freeze the text encoder and add a LoRA adapter on its attention projections (or ``spec.targets``)."""
    text_encoder.requires_grad_(False)
    spec = LoraSpec.coerce(spec, "sd.text_encoder_lora").validate("sd.text_encoder_lora", allow_blocks=False)
    config = spec.peft_config(spec.targets or TEXT_ENCODER_LORA_TARGETS)
    try:
        inject_lora(text_encoder, config)
    except ValueError as e:
        raise ValueError(f"text-encoder LoRA targets {list(config.target_modules)} match no module ({e}); CLIP "
                         f"text encoders name them q_proj, k_proj, v_proj, out_proj, fc1, fc2") from None


def save_restoration(model: RestorationUNet, out_dir: Union[str, Path], text_encoder: Optional[nn.Module] = None,
                     backbone: Optional[SDBackbone] = None) -> Path:
    """Write LoRA (diffusers format), extras and ``restoration.json`` atomically into ``out_dir``.

    ``backbone`` writes the LoRA file in its family's format (SD 1.x/2.x by default).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (backbone or SDBackbone).save_lora(tmp, model.unet, text_encoder)
    extras = {k: v.detach().float().cpu().contiguous() for k, v in model.extras_state_dict().items()}
    if extras:
        save_file(extras, str(tmp / EXTRAS_NAME), metadata={"format": "pt"})
    (tmp / CONFIG_NAME).write_text(json.dumps(asdict(model.config), indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def read_restoration_config(folder: Union[str, Path]) -> RestorationConfig:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a restoration output folder ({CONFIG_NAME} is missing); pass "
                                f"experiments/<name>/models/restoration")
    data = json.loads(path.read_text())
    known = {f for f in RestorationConfig.__dataclass_fields__}
    # relative paths of the base models resolve against this folder when they exist there (a folder that
    # travels with its base models, like the shipped tiny restorer), else they are kept as written
    for key in ("base", "daclip_pretrained", "daclip_adapter"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).exists():
            data[key] = str((folder / value).resolve())
    return RestorationConfig(**{k: v for k, v in data.items() if k in known})


def load_restoration(model: RestorationUNet, folder: Union[str, Path], text_encoder: Optional[nn.Module] = None,
                     ) -> None:
    """Load a saved LoRA (+ extras) into a freshly built :class:`RestorationUNet` (and text encoder)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    lora_path = folder / LORA_WEIGHT_NAME
    if not lora_path.is_file():
        raise FileNotFoundError(f"{folder} has no {LORA_WEIGHT_NAME}; pass the folder a restoration run wrote "
                                f"(experiments/<name>/models/restoration)")
    with safe_open(str(lora_path), framework="pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(lora_path))
    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    unet_state = convert_unet_state_dict_to_peft(unet_state)
    flat = json.loads(metadata.get("lora_adapter_metadata", "{}"))  # diffusers stores {"unet.r": 8, ...}
    unet_meta = {k[len("unet."):]: v for k, v in flat.items() if k.startswith("unet.")}
    if not getattr(model.unet, "peft_config", None):
        saved = LoraConfig(**{k: v for k, v in unet_meta.items() if k in LoraConfig.__dataclass_fields__}) \
            if unet_meta else None
        add_unet_lora(model.unet, model.config.lora, config=saved)
    try:
        incompatible = set_peft_model_state_dict(model.unet, unet_state, adapter_name="default")
    except RuntimeError as e:  # size mismatch
        raise ValueError(f"{lora_path} does not fit this UNet ({str(e).splitlines()[-1].strip()}); it was "
                         f"trained on another base model or with another LoRA rank") from None
    unexpected = list(getattr(incompatible, "unexpected_keys", None) or [])
    if unexpected or not unet_state:
        raise ValueError(f"{lora_path} does not fit this UNet: {len(unexpected)} unexpected LoRA tensors "
                         f"(e.g. {unexpected[:2]}); it was trained on another base model or LoRA targets")
    if (folder / EXTRAS_NAME).is_file():
        model.load_extras(load_file(str(folder / EXTRAS_NAME)))
    if text_encoder is not None:
        te_state = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
        if te_state:
            from diffusers.utils import convert_state_dict_to_peft

            if not getattr(text_encoder, "peft_config", None):
                add_text_encoder_lora(text_encoder, model.config.text_encoder_lora or {})
            try:
                set_peft_model_state_dict(text_encoder, convert_state_dict_to_peft(te_state), adapter_name="default")
            except RuntimeError as e:  # size mismatch: dozens of lines from load_state_dict
                raise ValueError(f"{lora_path}: its text-encoder LoRA does not fit this text encoder "
                                 f"({str(e).splitlines()[-1].strip()}); it was trained with another "
                                 f"sd.text_encoder_lora rank or on another base model") from None
