"""The optional fusion head: a degradation-aware blend, weighted per image, of the LQ image and the decoded latents.

A UNet trained to regress the GT's latent aims at the VAE's reconstruction ``D(E(GT))``, which is below mildly
degraded inputs, so the decoded output stays below them (the decoder itself could do better from another latent;
``bench/vae_ceiling.py`` measures both). The head adds to the LQ image the latent's correction ``D(z) - D(z_LQ)``
(decoded restored latent minus decoded LQ latent), the VAE round trip ``D(z_LQ) - LQ`` (a smoothing) and the LQ
itself, each with its own weight (the first two per frequency band), then applies a per-channel colour
correction; weights and correction come from DA-CLIP's degradation embedding and global statistics of the LQ and
of how far the decoded output moved from it (:class:`FusionHead`). It starts as the identity (output = LQ) and
is fitted after the LoRA, on the training images' decodes (:func:`fit_fusion_head`),
from per-image moments (:meth:`FusionHead.moments`): its memory does not grow with the images' count or size.

``D(z_LQ)`` costs a second VAE decode per image. A head built with ``decoded_lq=False`` (option
``sd.fusion_decoded_lq: false``) uses the LQ image in its place: the same blend with ``D(z_LQ) = LQ``, i.e. ``LQ`` and
``D(z)`` only, and one decode (the trade-off is measured in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .._utils.image_metrics import mse_to_psnr
from .color_fix import wavelet_decompose

__all__ = ["FusionHead", "fit_fusion_head", "fusion_fit_data"]


class FusionHead(nn.Module):
    """Degradation-aware output fusion: per image, ``LQ`` plus weighted correction terms, then a per-channel
    colour correction.

    ``mixed = LQ + sum_i w_i term_i`` (:meth:`terms`): the latent's correction ``D(z) - D(z_LQ)``, the VAE round
    trip ``D(z_LQ) - LQ`` and the LQ itself. These residual coordinates span the same blends as plain
    coefficients of ``LQ``, ``D(z)`` and ``D(z_LQ)``, but the fit (Adam, per coordinate) reaches "add the
    latent's correction" directly; in plain coordinates it settled on smoothing blends (``docs/restoration.md``).
    The correction and the round trip are each split into a low- and a high-frequency band with their own weights;
    the colour correction is a log-gain about the image's mean, ``(mixed - mean) * exp(g) + mean + b``. A small MLP
    predicts the weights and the colour correction from DA-CLIP's degradation embedding and global statistics: the
    LQ's per-channel mean and log standard deviation, how far ``D(z)`` moves them and the log energy of the latent's
    correction, so it sees how much the UNet changed the image, not only what DA-CLIP says it is. The last layer
    starts at zero, where the output is the LQ image.
    """

    #: à-trous levels of the frequency bands (the colour fix's decomposition,
    #: :func:`~daclip_lora.restoration.color_fix.wavelet_decompose`): ``low`` is blurred at dilations 1 to 16
    BAND_LEVELS = 5
    #: how many terms the blend weighs (:meth:`terms`)
    n_terms = 5

    def __init__(self, embed_dim: int, hidden: int = 64, channels: int = 3, decoded_lq: bool = True):
        super().__init__()
        self.channels = channels
        #: whether the blend reads ``D(z_LQ)`` (a second decode); ``False``: the LQ image stands in for it
        self.uses_decoded_lq = decoded_lq
        self.norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim + 4 * channels + 1, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, self.n_terms + 2 * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        # set by fit_fusion_head (and saved); until then the pipeline decodes without the head (training-time
        # validation). A Python flag, not a buffer: reading it never syncs a device
        self.fitted = False

    def statistics(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor) -> torch.Tensor:
        """The images' global statistics the head reads, ``(B, 4C + 1)``."""
        mean, std = lq.mean((2, 3)), lq.std((2, 3))
        log_std = torch.log(std + 1e-3)
        moved_mean = decoded.mean((2, 3)) - mean
        moved_log_std = torch.log(decoded.std((2, 3)) + 1e-3) - log_std
        # floored at an RMS of 0.01: below it the log would amplify rounding (merged vs unmerged LoRA, fp16)
        correction = torch.log((decoded - decoded_lq).pow(2).mean((1, 2, 3)) + 1e-4)[:, None]
        return torch.cat([mean, log_std, moved_mean, moved_log_std, correction], dim=1)

    def terms(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)``: what the blend adds to the LQ image, each term with its own weight: the latent's
        correction ``D(z) - D(z_LQ)``, the VAE round trip ``D(z_LQ) - LQ`` and the LQ; the first two split into
        low and high frequencies (a colour or brightness correction and fine detail, or the round
        trip's colour shift and its smoothing, are trusted separately)."""
        correction, round_trip = decoded - decoded_lq, decoded_lq - lq
        c_high, c_low = wavelet_decompose(correction, self.BAND_LEVELS)
        r_high, r_low = wavelet_decompose(round_trip, self.BAND_LEVELS)
        return torch.stack([c_low, c_high, r_low, r_high, lq], dim=1)

    def inputs(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor]
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The parameter-free part of the head: ``(statistics, terms)`` in fp32 (:func:`fit_fusion_head`
        computes it once per image)."""
        if not self.uses_decoded_lq:
            decoded_lq = lq
        elif decoded_lq is None:
            raise ValueError("this fusion head blends D(z_LQ), the decoded LQ latent: pass it (or build the head "
                             "with decoded_lq=False, option sd.fusion_decoded_lq: false)")
        lq, decoded, decoded_lq = lq.float(), decoded.float(), decoded_lq.float()
        return self.statistics(lq, decoded, decoded_lq), self.terms(lq, decoded, decoded_lq)

    def blend_weights(self, stats: torch.Tensor, degra_emb: torch.Tensor) -> torch.Tensor:
        """``(B, T + 2C)``: the weight of each of the :meth:`terms`, the colour log-gains and offsets; all zero
        (the identity) when untrained."""
        p = self.fc1.weight
        emb = self.norm(degra_emb.to(p.dtype))
        return self.fc2(self.act(self.fc1(torch.cat([emb, stats.to(p.dtype)], dim=1)))).float()

    def blend(self, lq: torch.Tensor, terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``LQ + sum_i w_i term_i``, then the colour correction (:meth:`blend_weights` gives ``weights``)."""
        n, c = self.n_terms, self.channels
        k = weights.view(weights.shape[0], -1, 1, 1)
        mixed = lq.float() + torch.einsum("bt,btchw->bchw", weights[:, :n], terms)  # no (B, T, C, H, W) product
        gain, offset = k[:, n:n + c], k[:, n + c:]
        # (mixed - mean) * exp(g) + mean + b, written so that g = b = 0 gives mixed exactly
        return mixed + (mixed - mixed.mean((2, 3), keepdim=True)) * torch.expm1(gain) + offset

    @torch.no_grad()
    def moments(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor],
                gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What the fit needs of each image, a few hundred numbers whatever its size: the :meth:`statistics`,
        and per channel the means and the Gram matrix (mean products about the means, float64) of
        ``[LQ, term_1 .. term_T, GT]``. The blend is linear in the terms and the colour correction is a gain
        about the mean plus an offset, so every image's MSE for any head output is a quadratic form in them
        (:meth:`moment_log_mse`)."""
        stats, terms = self.inputs(lq, decoded, decoded_lq)
        grams, means = [], []
        for i in range(lq.shape[0]):  # one image at a time: the float64 copy stays one image's size
            x = torch.cat([lq[i, None].float(), terms[i], gt[i, None].to(terms)], dim=0).double()  # (J, C, H, W)
            mean = x.mean((2, 3), keepdim=True)
            centred = (x - mean).flatten(2)
            grams.append(torch.einsum("jcp,kcp->cjk", centred, centred) / centred.shape[-1])
            means.append(mean[..., 0, 0].T)  # (C, J)
        return {"stats": stats, "gram": torch.stack(grams), "means": torch.stack(means)}

    def moment_log_mse(self, weights: torch.Tensor, gram: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """``log(MSE)`` per image of the head's output (before clamping) against the GT, from :meth:`moments`
        and :meth:`blend_weights`: equal to the pixels' value up to float rounding."""
        n, c = self.n_terms, self.channels
        v = torch.cat([torch.ones_like(weights[:, :1]), weights[:, :n]], dim=1).double()  # LQ and each term
        gain, offset = weights[:, n:n + c].double(), weights[:, n + c:].double()
        mixed_mean = torch.einsum("bj,bcj->bc", v, means[..., :-1])
        scale, out_mean = gain.exp(), mixed_mean + offset  # (mixed - mean) * exp(g) + mean + b
        u = torch.cat([scale[..., None] * v[:, None, :], -torch.ones_like(scale[..., None])], dim=-1)  # (B, C, J)
        mse = torch.einsum("bcj,bcjk,bck->bc", u, gram, u) + (out_mean - means[..., -1]) ** 2
        return torch.log(mse.mean(1).clamp(min=0) + 1e-8).float()

    def forward(self, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor],
                degra_emb: torch.Tensor) -> torch.Tensor:
        """The fused image; ``decoded_lq`` is ignored (may be ``None``) by a head built with ``decoded_lq=False``."""
        stats, terms = self.inputs(lq, decoded, decoded_lq)
        return self.blend(lq, terms, self.blend_weights(stats, degra_emb))


def _log_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.log((out.float() - target.float()).pow(2).mean((1, 2, 3)) + 1e-8)


def _mean_psnr(log_mses: torch.Tensor) -> float:
    return sum(mse_to_psnr(m) for m in log_mses.exp().tolist()) / len(log_mses)


@torch.no_grad()
def fusion_fit_data(head: FusionHead, lq: torch.Tensor, decoded: torch.Tensor, decoded_lq: Optional[torch.Tensor],
                    gt: torch.Tensor, degra_emb: torch.Tensor) -> Dict[str, torch.Tensor]:
    """What :func:`fit_fusion_head` needs of a batch of images (tensors ``(B, 3, H, W)`` in [0, 1] and ``(B, E)``
    degradation embeddings), on the CPU: the head's :meth:`~FusionHead.moments`, the embeddings and the log-MSEs of the LQ
    and of ``LQ + D(z) - D(z_LQ)`` for the report. Batches are concatenated key by key, so the fit's memory
    grows by a few kilobytes per image, not by its pixels."""
    if decoded_lq is None or not head.uses_decoded_lq:
        decoded_lq = lq
    p = next(head.parameters())
    lq, decoded, decoded_lq, gt = (t.to(p.device, torch.float32) for t in (lq, decoded, decoded_lq, gt))
    out = head.moments(lq, decoded, decoded_lq, gt)
    out.update(degra_emb=degra_emb.float(), log_mse_lq=_log_mse(lq, gt),
               log_mse_residual=_log_mse((lq + decoded - decoded_lq).clamp(0, 1), gt))
    return {k: v.cpu() for k, v in out.items()}


def fit_fusion_head(head: FusionHead, data: Dict[str, torch.Tensor], steps: int = 400, lr: float = 3e-3,
                    batch: int = 128, seed: int = 0) -> Dict[str, float]:
    """Fit ``head`` on training images' :func:`fusion_fit_data` (concatenated over batches).

    Loss: mean over images of ``log(MSE)`` (maximises mean PSNR), computed from the moments, so memory does
    not depend on the images' size or count beyond a few kilobytes each. Deterministic for a given ``seed``.
    Returns the training set's mean PSNR of the LQ, of ``LQ + D(z) - D(z_LQ)`` and of the head's output (before
    clamping to [0, 1]).
    """
    n = data["stats"].shape[0]
    if n == 0:
        raise ValueError("fit_fusion_head needs at least one training image")
    device = next(head.parameters()).device
    head.requires_grad_(True).train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        st, de, gram, means = (data[k][idx].to(device) for k in ("stats", "degra_emb", "gram", "means"))
        return head.moment_log_mse(head.blend_weights(st, de), gram, means)

    for step in range(steps):
        for group in opt.param_groups:  # cosine decay
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_of(torch.randperm(n, generator=gen)[:batch]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False).eval()
    head.fitted = True
    with torch.no_grad():
        fused = torch.cat([loss_of(torch.arange(i, min(n, i + batch))).cpu() for i in range(0, n, batch)])
    return {"psnr_lq": _mean_psnr(data["log_mse_lq"]), "psnr_residual": _mean_psnr(data["log_mse_residual"]),
            "psnr_fused": _mean_psnr(fused)}
