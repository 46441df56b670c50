"""The fidelity / perception control: the UNet LoRA's strength at inference (set_lora_scale, --lora-scale)."""

import numpy as np
import pytest
import torch
from skimage import data

from daclip_lora._utils.lora import unload_lora
from daclip_lora.apps.cli import main
from daclip_lora.data.degrade import degrade
from daclip_lora.restoration.pipeline import RestorationPipeline
from daclip_lora.tiny.locate import embedded_restorer
from daclip_lora.tiny.sd import build_tiny_sd

from test_restoration_core import _pipeline


@pytest.fixture(scope="module")
def lq():
    img = data.chelsea()[100:164, 150:214].astype(np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray(degrade(img, "hazy", seed=0), dtype=np.float32)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny_sd", seed=0)


def _pipe(**kw):
    return RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu", **kw)


@torch.no_grad()
def test_scale_zero_is_the_base_unet(lq):
    pipe = _pipe(merge_lora=False)
    pipe.set_lora_scale(0.0)
    scaled = pipe(lq, fusion=False)
    base = _pipe(merge_lora=False)
    unload_lora(base.model.unet, merge=False)  # the LoRA layers removed: the pretrained UNet
    assert (scaled - base(lq, fusion=False)).abs().max().item() < 1e-5


@torch.no_grad()
def test_scale_moves_the_output_monotonically(lq):
    """Distance to the scale-1 output shrinks as the scale goes 0 -> 1; scale 1 is the trained model exactly."""
    pipe = _pipe(merge_lora=False)
    trained = pipe(lq)
    gaps = []
    for scale in (0.0, 0.5, 1.0):
        pipe.set_lora_scale(scale)
        gaps.append((pipe(lq) - trained).abs().mean().item())
    assert gaps[0] > gaps[1] > 1e-4 and gaps[2] == 0.0


@torch.no_grad()
def test_scale_applied_before_merging_equals_unmerged(base, lq):
    """A plain (not modulated) LoRA: scale 0.5 then merge gives the unmerged model at 0.5; the merged one can no
    longer change its scale, and says how to."""
    merged, unmerged, full = _pipeline(base), _pipeline(base), _pipeline(base)
    merged.set_lora_scale(0.5)
    merged.merge_lora()
    unmerged.set_lora_scale(0.5)
    half = unmerged(lq, steps=2)
    assert (merged(lq, steps=2) - half).abs().max().item() < 1e-4
    assert (full(lq, steps=2) - half).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match=r"merged at scale 0.5, so lora_scale 1 cannot be applied: load with "
                                         r"merge_lora=False"):
        merged.set_lora_scale(1.0)


@pytest.mark.parametrize("scale", [-0.1, 5.0, float("nan"), "1"])
def test_bad_scales_are_refused(scale):
    pipe = _pipe(merge_lora=False)
    with pytest.raises(ValueError, match=r"lora_scale must be a number in \[0, 4\]"):
        pipe.set_lora_scale(scale)


def test_cli_refuses_a_bad_scale_before_loading(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--lora-scale", "9"]) == 2
    assert "--lora-scale must be in [0, 4]" in capsys.readouterr().err
