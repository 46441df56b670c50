"""Diffusion maths shared by training and inference, written once: the one-step input, the training target and
the clean-latent estimate for each ``prediction_type``, and the (Min-SNR weighted) loss."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

__all__ = ["PREDICTION_TYPES", "alpha_bar", "diffusion_loss", "diffusion_target", "one_step", "one_step_input",
           "predicted_x0", "prediction_type"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler: Any) -> str:
    """The scheduler's ``prediction_type``, checked.

    Raises:
        ValueError: an unknown ``prediction_type`` (instead of silently training on ``None``).
    """
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported; use one of "
                         f"{', '.join(PREDICTION_TYPES)} (scheduler/scheduler_config.json of the base model)")
    return kind


def alpha_bar(scheduler: Any, timesteps: Union[int, torch.Tensor], device: torch.device) -> torch.Tensor:
    """``abar_t`` (fp32) on ``device``: a scalar for a scalar ``t``, else shaped ``(B, 1, 1, 1)``."""
    t = torch.as_tensor(timesteps).long()
    # a 1-D index on the target device: a 0-d index would call .item(), which a meta device cannot
    alpha = scheduler.alphas_cumprod.to(device)[t.reshape(-1).to(device)].float()
    return alpha.reshape(()) if t.ndim == 0 else alpha.view(-1, 1, 1, 1)


ONE_STEP_INPUTS = ("scaled", "raw")


def one_step_input(scheduler: Any, z_lq: torch.Tensor, timesteps: Union[int, torch.Tensor],
                   kind: str = "scaled") -> torch.Tensor:
    """The one-step restorers' UNet input (fp32): ``scaled``, the LQ latent read as ``x_t = sqrt(abar_t) z_LQ``;
    ``raw``, the LQ latent as it is (OSEDiff's input at ``t = 999``, where the scaled one is nearly zero)."""
    if kind not in ONE_STEP_INPUTS:
        raise ValueError(f"one_step_input must be one of {', '.join(ONE_STEP_INPUTS)}, got {kind!r}")
    if kind == "raw":
        return z_lq.float()
    return alpha_bar(scheduler, timesteps, z_lq.device).sqrt() * z_lq.float()


def one_step(scheduler: Any, z_lq: torch.Tensor, t: int, kind: str,
             predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The one-step restoration, written once for training, the fusion head's fit and the pipeline: the LQ latent
    as the UNet's input at timestep ``t`` (:func:`one_step_input` of ``kind``), and the UNet's prediction
    ``predict(noisy, timesteps)`` (``timesteps``: ``(B,)`` long) turned into the restored latent
    (:func:`predicted_x0`)."""
    timesteps = torch.full((z_lq.shape[0],), int(t), device=z_lq.device, dtype=torch.long)
    noisy = one_step_input(scheduler, z_lq, timesteps, kind)
    return predicted_x0(scheduler, predict(noisy, timesteps), noisy, timesteps)


def diffusion_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                     ) -> torch.Tensor:
    """What the UNet is trained to predict for the scheduler's ``prediction_type``."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return latents


def predicted_x0(scheduler: Any, pred: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by the UNet's prediction ``pred`` at ``noisy`` and ``timesteps`` (any
    ``prediction_type``): the one-step restoration's output."""
    kind = prediction_type(scheduler)
    alpha = alpha_bar(scheduler, timesteps.reshape(-1), noisy.device)
    pred = pred.float()
    if kind == "epsilon":
        return (noisy - (1 - alpha).sqrt() * pred) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * pred
    return pred


def diffusion_loss(scheduler: Any, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                   snr_gamma: Optional[float] = None, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample MSE (fp32), optionally Min-SNR-gamma weighted (Hang et al. 2023) and multiplied by per-sample
    ``weights``, averaged over the batch."""
    loss = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        kind = prediction_type(scheduler)
        if kind == "sample":
            weight = torch.clamp(snr, max=snr_gamma)
        else:
            weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
        loss = loss * weight.to(loss.dtype)
    if weights is not None:
        loss = loss * weights.to(loss.dtype).view(-1)
    return loss.mean()
