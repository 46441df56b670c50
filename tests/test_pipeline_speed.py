"""Speed work keeps outputs: the batched fusion-head decodes and the compiled path."""

import time

import pytest
import torch

from daclip_lora.restoration.pipeline import RestorationPipeline
from daclip_lora.tiny.locate import embedded_restorer


@pytest.fixture(scope="module")
def lq():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_batched_decodes_equal_two_decoder_calls(lq):
    pipe = RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu")
    assert pipe.model.fusion is not None and pipe.model.fusion.fitted
    separate = pipe(lq)
    pipe.batch_decodes = True
    batched = pipe(lq)
    assert (batched - separate).abs().max().item() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo's graph capture and AOT autograd on the real modules, without inductor's codegen
    pytest.param("inductor", marks=pytest.mark.slow),  # the default backend: C++ codegen, ~90 s on 2 cores
])
def test_compiled_pipeline_gives_the_same_outputs(lq, backend):
    """torch.compile of the UNet and the VAE decoder: outputs within 1e-4 of eager."""
    pipe = RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu")
    eager = pipe(lq)
    t0 = time.perf_counter()
    compiled = pipe.compile(backend=backend)(lq)
    assert pipe.compiled and time.perf_counter() - t0 < 300
    assert (compiled - eager).abs().max().item() < 1e-4


def test_call_runs_in_inference_mode_with_the_no_grad_outputs(lq):
    """The pipeline call is under torch.inference_mode: same outputs as the same code under no_grad (exactly)."""
    pipe = RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu")
    out = pipe(lq)
    with torch.no_grad():
        ref = RestorationPipeline.__call__.__wrapped__(pipe, lq)
    assert out.is_inference() and not ref.is_inference()
    assert (out - ref).abs().max().item() == 0.0
