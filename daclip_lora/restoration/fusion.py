"""The optional fusion head: a degradation-aware global blend of the LQ image and the decoded latents.

A UNet trained to regress the GT's latent aims at the VAE's reconstruction ``D(E(GT))``, which is below mildly
degraded inputs, so the decoded output stays below them (the decoder itself could do better from another latent;
``bench/vae_ceiling.py`` measures both). The head adds to the LQ image the latent's correction ``D(z) - D(z_LQ)`` (decoded
restored latent minus decoded LQ latent), the VAE round trip ``D(z_LQ) - LQ`` (a smoothing) and the LQ itself,
each with its own weight, then applies a per-channel colour correction; weights and correction come from
DA-CLIP's degradation embedding and global statistics of the LQ and of how far the decoded output
moved from it (version 3 of the head; :class:`FusionHead`). It starts as the identity
(output = LQ) and is fitted after the LoRA, on the training images' decodes (:func:`fit_fusion_head`).

``D(z_LQ)`` costs a second VAE decode per image. A head built with ``decoded_lq=False`` (option
``sd.fusion_decoded_lq: false``) uses the LQ image in its place: the same blend with ``D(z_LQ) = LQ``, i.e. ``LQ`` and
``D(z)`` only, and one decode (the trade-off is measured in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn as nn

from .._utils.image_metrics import mse_to_psnr

__all__ = ["FusionHead", "fit_fusion_head"]


class FusionHead(nn.Module):
    """Degradation-aware output fusion: a per-image blend of ``LQ``, ``D(z)`` and ``D(z_LQ)``, then a per-channel
    colour correction.

    A small MLP reads DA-CLIP's degradation embedding (and, before version 3, the content embedding) and global
    statistics of the images (below) and predicts the blend in residual coordinates, ``mixed = LQ + w1 (D(z) - D(z_LQ)) + w2 (D(z_LQ) - LQ) +
    w3 LQ``, i.e. ``c1 LQ + c2 D(z) + c3 D(z_LQ)`` with ``(c1, c2, c3) = (1 - w2 + w3, w1, w2 - w1)``: the same
    family of blends as plain coefficients, but the fit (Adam, per coordinate) reaches "add the latent's
    correction" (``w1``) directly; in plain coordinates it settled on smoothing blends (``docs/restoration.md``).
    The colour correction, per channel ``c``:

    * version 3 (``COORDINATES``, what a fresh head is): ``(mixed - mean(mixed)) * exp(g) + mean(mixed) + b``,
      a log-gain about the image's mean. The head reads the degradation embedding, not the content one (which
      only made its fit noisier; ``docs/restoration.md``). The statistics are the LQ's per-channel mean and log standard
      deviation, how far ``D(z)`` moves them, and the log energy of the latent's correction ``D(z) - D(z_LQ)``:
      the head sees how much the UNet changed the image, not only what DA-CLIP says it is;
    * versions 1 and 2 (folders saved before it; 1 had plain blend outputs): ``(1 + g) * mixed + b`` from
      the LQ's mean and standard deviation only.

    The last layer starts at zero, where the output is the LQ image.
    """

    #: version of the head's parametrisation in saved weights (``restoration.json``'s
    #: ``fusion_head.coordinates``): 1 plain blend coordinates, 2 residual ones, 3 residual with the decodes'
    #: statistics and the log-gain colour correction. Versions 1 and 2 are still read.
    COORDINATES = 3

    def __init__(self, embed_dim: int, hidden: int = 64, channels: int = 3, decoded_lq: bool = True,
                 version: int = COORDINATES):
        super().__init__()
        if version not in (2, 3):
            raise ValueError(f"FusionHead version must be 2 or 3 (1 is converted on load), got {version}")
        self.channels, self.version = channels, version
        #: whether the blend reads ``D(z_LQ)`` (a second decode); ``False``: the LQ image stands in for it
        self.uses_decoded_lq = decoded_lq
        # version 3 reads the degradation embedding only, versions 1-2 the content embedding too
        n_emb, n_stats = (embed_dim, 4 * channels + 1) if version >= 3 else (2 * embed_dim, 2 * channels)
        self.norm = nn.LayerNorm(n_emb)
        self.fc1 = nn.Linear(n_emb + n_stats, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 3 + 2 * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        # set by fit_fusion_head (and saved); until then the pipeline decodes without the head (training-time
        # validation). A Python flag, not a buffer: reading it never syncs a device
        self.fitted = False

    def statistics(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor) -> torch.Tensor:
        """The images' global statistics the head reads, ``(B, 4C + 1)`` (version 3) or ``(B, 2C)``."""
        mean, std = lq.mean((2, 3)), lq.std((2, 3))
        if self.version < 3:
            return torch.cat([mean, std], dim=1)
        log_std = torch.log(std + 1e-3)
        moved_mean = decoded.mean((2, 3)) - mean
        moved_log_std = torch.log(decoded.std((2, 3)) + 1e-3) - log_std
        # floored at an RMS of 0.01: below it the log would amplify rounding (merged vs unmerged LoRA, fp16)
        correction = torch.log((decoded - decoded_lq).pow(2).mean((1, 2, 3)) + 1e-4)[:, None]
        return torch.cat([mean, log_std, moved_mean, moved_log_std, correction], dim=1)

    def coefficients(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor,
                     image_emb: torch.Tensor, degra_emb: torch.Tensor) -> torch.Tensor:
        """``(B, 3 + 2C)``: blend weights ``(c1, c2, c3)``, colour gains and offsets (the gains are log-gains in
        version 3, ``1 + g`` before; all at their identity values when untrained)."""
        p = self.fc1.weight
        stats = self.statistics(lq.float(), decoded.float(), decoded_lq.float()).to(p.dtype)
        emb = self.norm((degra_emb if self.version >= 3 else torch.cat([image_emb, degra_emb], dim=1)).to(p.dtype))
        h = self.fc2(self.act(self.fc1(torch.cat([emb, stats], dim=1))))
        w1, w2, w3 = h[:, 0:1], h[:, 1:2], h[:, 2:3]
        blend = torch.cat([1 + w3 - w2, w1, w2 - w1], dim=1)
        gain = h[:, 3:3 + self.channels] if self.version >= 3 else 1 + h[:, 3:3 + self.channels]
        return torch.cat([blend, gain, h[:, 3 + self.channels:]], dim=1)

    @staticmethod
    def legacy_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Convert a version-1 state dict (plain blend outputs ``(c1 - 1, c2, c3)``) to version 2's residual
        coordinates (exact: ``w1 = c2, w2 = c2 + c3, w3 = c1 + c2 + c3 - 1`` on ``fc2``'s first three rows)."""
        out = dict(state)
        for key in ("fc2.weight", "fc2.bias"):
            v = state[key].clone()
            r1, r2, r3 = state[key][0], state[key][1], state[key][2]
            v[0], v[1], v[2] = r2, r2 + r3, r1 + r2 + r3
            out[key] = v
        return out

    def forward(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor],
                image_emb: torch.Tensor, degra_emb: torch.Tensor) -> torch.Tensor:
        """The blend; ``decoded_lq`` is ignored (may be ``None``) by a head built with ``decoded_lq=False``."""
        if not self.uses_decoded_lq:
            decoded_lq = lq
        elif decoded_lq is None:
            raise ValueError("this fusion head blends D(z_LQ), the decoded LQ latent: pass it (or build the head "
                             "with decoded_lq=False, option sd.fusion_decoded_lq: false)")
        k = self.coefficients(lq, decoded, decoded_lq, image_emb, degra_emb).float().view(lq.shape[0], -1, 1, 1)
        c = self.channels
        mixed = k[:, 0:1] * lq + k[:, 1:2] * decoded + k[:, 2:3] * decoded_lq
        gain, offset = k[:, 3:3 + c], k[:, 3 + c:]
        if self.version < 3:
            return gain * mixed + offset
        # (mixed - mean) * exp(g) + mean + b, written so that g = b = 0 gives mixed exactly
        return mixed + (mixed - mixed.mean((2, 3), keepdim=True)) * torch.expm1(gain) + offset


def fit_fusion_head(head: FusionHead, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor],
                    gt: torch.Tensor, image_emb: torch.Tensor, degra_emb: torch.Tensor, steps: int = 400,
                    lr: float = 3e-3, batch: int = 128, seed: int = 0) -> Dict[str, float]:
    """Fit ``head`` on training images (tensors ``(N, 3, H, W)`` in [0, 1] and ``(N, E)`` embeddings).

    Loss: mean over images of ``log(MSE)`` (maximises mean PSNR). Deterministic for a given ``seed``.
    Returns the training set's mean PSNR of the LQ, of ``LQ + D(z) - D(z_LQ)`` and of the head's output.
    ``decoded_lq`` may be ``None`` for a head that does not read it (then ``D(z_LQ) = LQ`` in the residual).
    """
    if decoded_lq is None or not head.uses_decoded_lq:
        decoded_lq = lq
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

    def psnr(log_mses: torch.Tensor) -> float:  # mean per-image PSNR
        return sum(mse_to_psnr(m) for m in log_mses.exp().tolist()) / len(log_mses)

    with torch.no_grad():
        lq_l, res_l, out_l = [], [], []
        for i in range(0, n, batch):
            x, d, dl, y, ie, de = take(torch.arange(i, min(n, i + batch)))
            lq_l.append(log_mse(x, y))
            res_l.append(log_mse((x + d - dl).clamp(0, 1), y))
            out_l.append(log_mse(head(x, d, dl, ie, de).clamp(0, 1), y))
    return {"psnr_lq": psnr(torch.cat(lq_l)), "psnr_residual": psnr(torch.cat(res_l)),
            "psnr_fused": psnr(torch.cat(out_l))}

