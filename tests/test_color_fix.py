"""Colour fix (restoration.color_fix): the wavelet and AdaIN fixes as StableSR defines them, and ``auto``."""

import pytest
import torch

from daclip_lora.restoration.color_fix import adain, apply_color_fix, wavelet, wavelet_decompose


def _image(seed=0, b=1, size=48):
    return 0.2 + 0.6 * torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_wavelet_decomposition_is_exact():
    x = _image()
    high, low = wavelet_decompose(x)
    assert (high + low - x).abs().max().item() < 1e-6
    assert low.std().item() < 0.5 * x.std().item()  # the low band is smooth


@pytest.mark.parametrize("fix, restored, bound", [
    (wavelet, lambda lq: (lq + torch.tensor([0.1, -0.05, 0.08]).view(1, 3, 1, 1)), 1e-5),  # a colour cast
    (adain, lambda lq: 0.5 * lq + 0.3, 1e-3),  # channel statistics off (the bound: AdaIN's eps in the variance)
])
def test_the_fix_takes_the_lq_colours_back(fix, restored, bound):
    lq = _image()
    assert (fix(restored(lq), lq) - lq).abs().max().item() < bound


def test_wavelet_keeps_the_restored_details():
    lq, details = _image(1), 0.05 * torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    fixed = wavelet((lq + details).clamp(0, 1), lq)
    high_fixed, _ = wavelet_decompose(fixed)
    high_in, _ = wavelet_decompose((lq + details).clamp(0, 1))
    assert (high_fixed - high_in).abs().mean().item() < 0.01


def test_auto_leaves_low_frequency_degradations_alone():
    lq = _image(b=2)
    restored = lq * 0.5
    out = apply_color_fix(restored, lq, "auto", ["low-light", "noisy"])
    assert torch.equal(out[0], restored[0])  # low light: the LQ's colours are the degradation
    assert torch.allclose(out[1], wavelet(restored[1:], lq[1:])[0])


@pytest.mark.parametrize("method, words, message", [
    ("sepia", None, "unknown colour fix 'sepia'; use one of none, wavelet, adain, auto"),
    ("auto", None, "needs DA-CLIP's predicted degradation of every image"),
    ("auto", ["noisy"], "needs DA-CLIP's predicted degradation of every image"),
])
def test_bad_colour_fix_arguments(method, words, message):
    with pytest.raises(ValueError, match=message):
        apply_color_fix(_image(b=2), _image(b=2), method, words)


def test_pipeline_colour_fix_changes_the_output_and_checks_its_name():
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import EMBEDDED_RESTORER

    pipe = RestorationPipeline.from_pretrained(EMBEDDED_RESTORER, device="cpu")
    lq = _image(3, size=64)
    none, fixed = pipe(lq), pipe(lq, color_fix="wavelet")
    assert (none - fixed).abs().max().item() > 0.01
    assert len(pipe.degradations.predict(pipe.daclip_embeddings(lq)[1])) == 1
    with pytest.raises(ValueError, match="unknown colour fix 'x'"):
        pipe(lq, color_fix="x")
