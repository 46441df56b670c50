"""Perceptual training losses (sd.loss): pyiqa's LPIPS/DISTS frozen, gradients to the LoRA, start-up errors."""

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("pyiqa")

from daclip_lora.metrics import MissingMetricWeights  # noqa: E402
from daclip_lora.metrics.losses import PerceptualLoss, PerceptualWeights  # noqa: E402
from daclip_lora.training.engine import Engine  # noqa: E402
from daclip_lora.training.tasks.restoration import RestorationTrainer  # noqa: E402

from test_restoration import _opt  # noqa: E402


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 64, 64, generator=g)
    return (target + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1), target


@pytest.mark.parametrize("weights", [{"l1": -1.0}, {"lpips": -0.1}, {"dists": "1"}])
def test_weights_are_validated(weights):
    with pytest.raises(ValueError, match="must be a number >= 0"):
        PerceptualWeights(**weights)


@pytest.mark.parametrize("term", ["lpips", "dists"])
def test_network_terms_are_frozen_and_pass_gradients(metric_hub, term):
    loss = PerceptualLoss(PerceptualWeights(**{term: 2.0}), metric_hub)
    assert not any(p.requires_grad for p in loss.parameters())
    pred, target = _pair()
    pred.requires_grad_(True)
    terms = loss(pred, target)
    assert list(terms) == [term] and terms[term].item() > 0
    terms[term].backward()
    assert pred.grad.abs().sum().item() > 0
    same = loss(target, target)[term].item()
    assert same < 1e-6 < terms[term].item()


def test_weight_scales_the_term(metric_hub):
    pred, target = _pair()
    one = PerceptualLoss(PerceptualWeights(lpips=1.0, l1=1.0), metric_hub)(pred, target)
    three = PerceptualLoss(PerceptualWeights(lpips=3.0, l1=0.5), metric_hub)(pred, target)
    assert three["lpips"].item() == pytest.approx(3 * one["lpips"].item(), rel=1e-5)
    assert three["l1"].item() == pytest.approx(0.5 * one["l1"].item(), rel=1e-6)


def test_missing_weight_fails_when_the_trainer_is_built(assets, tmp_path):
    """Before any data is read or any step runs: one line naming the file."""
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.loss.lpips=1.0", f"sd.loss.weights_dir={tmp_path}")
    with pytest.raises(MissingMetricWeights, match=r"^metric 'lpips' needs alexnet-owt-7be5be79.pth"):
        RestorationTrainer(opt)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_lpips_alone_moves_the_lora(assets, metric_hub, tmp_path, checkpoint):
    opt = _opt(tmp_path, assets, "sd.objective=one_step", "sd.loss.one_step=0", "sd.loss.lpips=1.0",
               f"sd.loss.weights_dir={metric_hub}", f"sd.loss.checkpoint_decoder={str(checkpoint).lower()}")
    trainer = RestorationTrainer(opt)
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = Engine(opt, trainer).fit()
    moved = max((p.detach() - lora[n]).abs().max().item() for n, p in trainer.model.named_parameters() if n in lora)
    assert result.step == 4 and moved > 1e-6 and all(v > 0 for v in result.losses)


def test_checkpointed_decoder_gives_the_same_gradients(assets, metric_hub, tmp_path):
    grads = []
    for checkpoint in (False, True):
        opt = _opt(tmp_path / str(checkpoint), assets, "sd.objective=one_step", "sd.loss.lpips=1.0",
                   "sd.loss.l1=1.0", f"sd.loss.weights_dir={metric_hub}",
                   f"sd.loss.checkpoint_decoder={str(checkpoint).lower()}", "runtime.cache=false")
        trainer = RestorationTrainer(opt)
        trainer.setup(SimpleNamespace(device=torch.device("cpu"), mixed_precision="no"))
        trainer.seed, trainer.step = 0, 0
        batch = next(iter(torch.utils.data.DataLoader(trainer.train_dataset(), batch_size=2)))
        batch["_index"] = torch.arange(2)
        out = trainer.training_step(trainer.model, batch)
        out["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in trainer.model.named_parameters()
                                if p.grad is not None]))
        assert {"lpips", "l1", "mse"} <= set(out)
    assert grads[0].abs().max().item() > 0
    assert (grads[0] - grads[1]).abs().max().item() < 1e-5 * grads[0].abs().max().item() + 1e-8


@pytest.mark.parametrize("overrides,message", [
    (["sd.loss.lpips=1.0"], "sd.loss.l1/lpips/dists are taken on the one-step output"),
    (["sd.objective=one_step", "sd.loss.one_step=0"], "every weight is 0"),
    (["sd.objective=one_step", "sd.loss.dists=-1"], "sd.loss.dists must be >= 0"),
])
def test_loss_option_errors(assets, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RestorationTrainer(_opt(tmp_path, assets, *overrides))
