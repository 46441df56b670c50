"""Stand-in weight files for pyiqa metrics: the real file names and tensor shapes, made-up values.

A convolution's weight is a random ``(out, in)`` matrix broadcast over its kernel window (a stride-0 view), so
a VGG16-shaped file is a few MB (the unused classifier layers: one value per output), yet features differ
per channel and per image. pyiqa loads these
through its own code, exactly as it would load the real downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch


def _compact(shape, generator: torch.Generator, positive: bool) -> torch.Tensor:
    """He-scaled random values: a full ``(out, in)`` matrix broadcast over a convolution's kernel window
    (biases and linear layers: one value per output)."""
    if len(shape) == 0:
        return torch.rand((), generator=generator) + 0.5
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    base = shape[:2] if len(shape) == 4 else shape[:1]
    t = torch.randn(*base, generator=generator) * ((2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01)
    t = t.abs() if positive else t
    return t.reshape(*base, *([1] * (len(shape) - len(base)))).expand(*shape)  # scale first: expand stays a view


def _save(state: Dict[str, torch.Tensor], path: Path, seed: int, positive: bool = False) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: _compact(tuple(v.shape), g, positive or "running_var" in k) for k, v in state.items()}, path)
    return path


def torchvision_backbones(hub: Path) -> None:
    """``checkpoints/alexnet-owt-7be5be79.pth`` and ``checkpoints/vgg16-397923af.pth`` (LPIPS, DISTS)."""
    import torchvision

    _save(torchvision.models.alexnet().state_dict(), hub / "checkpoints" / "alexnet-owt-7be5be79.pth", 1)
    _save(torchvision.models.vgg16().state_dict(), hub / "checkpoints" / "vgg16-397923af.pth", 2)


def lpips(hub: Path) -> None:
    """``pyiqa/LPIPS_v0.1_alex-df73285e.pth`` (the linear heads); needs the AlexNet stand-in first."""
    from daclip_lora.metrics import weights_guard
    from pyiqa.archs.lpips_arch import LPIPS

    with weights_guard("lpips", hub):  # pyiqa's AlexNet loads torchvision weights whatever pnet_rand says
        net = LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True)
    _save({k: v for k, v in net.state_dict().items() if k.startswith("lin")},
          hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth", 3, positive=True)


def dists(hub: Path) -> None:
    """``pyiqa/DISTS_weights-f5e65c96.pth`` (alpha, beta); needs the VGG16 stand-in first."""
    from daclip_lora.metrics import weights_guard
    from pyiqa.archs.dists_arch import DISTS

    with weights_guard("dists", hub):
        net = DISTS(pretrained=False)
    _save({k: v for k, v in net.state_dict().items() if k in ("alpha", "beta")},
          hub / "pyiqa" / "DISTS_weights-f5e65c96.pth", 4, positive=True)


def niqe(hub: Path) -> None:
    """``pyiqa/niqe_modelparameters.mat``: a 36-feature mean and a positive-definite covariance."""
    import scipy.io

    rng = np.random.default_rng(5)
    a = rng.normal(size=(36, 36))
    (hub / "pyiqa").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(hub / "pyiqa" / "niqe_modelparameters.mat",
                     {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T / 36 + np.eye(36)})


def fid(hub: Path) -> None:
    """``pyiqa/pt_inception-2015-12-05-6726825d.pth``: pyiqa's FID Inception, built without its weights."""
    from unittest import mock

    import pyiqa.archs.inception as inception

    with mock.patch.object(inception, "load_pretrained_network", lambda *a, **k: None):
        net = inception.fid_inception_v3()
    _save(net.state_dict(), hub / "pyiqa" / "pt_inception-2015-12-05-6726825d.pth", 6)


def all_stand_ins(hub: Path) -> Path:
    """Every stand-in above under ``hub`` (use it as ``weights_dir``)."""
    torchvision_backbones(hub)
    lpips(hub)
    dists(hub)
    niqe(hub)
    fid(hub)
    return hub
