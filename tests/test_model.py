"""DaCLIP semantics: control injection order, controller init, locking, dtypes, checkpointing."""

import pytest
import torch
import torch.nn.functional as F

import daclip_lora
from conftest import TINY, randomize_zero_modules


def _manual_controlled(model, image, reverse=True):
    """Hand-written reference loop: controller blocks, then CLIP blocks with injected hiddens."""
    vc, v = model.visual_control, model.clip.visual
    x = vc._embeds(image)
    hiddens = []
    for block, zero in zip(vc.transformer.transformer.resblocks, vc.transformer.zero_modules):
        x = block(x)
        hiddens.append(zero(x))
    degra = vc._pool(x)[0] @ vc.proj
    order = hiddens[::-1] if reverse else hiddens
    y = v._embeds(image)
    for block, h in zip(v.transformer.resblocks, order):
        y = block(y) + h
    return v._pool(y)[0] @ v.proj, degra


@torch.no_grad()
def test_zero_controller_leaves_clip_features_unchanged(tiny, images):
    plain = tiny.encode_image(images)
    controlled, _ = tiny.encode_image(images, control=True)
    assert (plain - controlled).abs().max().item() == 0.0


@torch.no_grad()
def test_nonzero_controller_changes_clip_features(tiny, images):
    randomize_zero_modules(tiny)
    plain = tiny.encode_image(images)
    controlled, _ = tiny.encode_image(images, control=True)
    assert (plain - controlled).abs().max().item() > 1e-2


@torch.no_grad()
def test_injection_is_reverse_order_like_reference(tiny, images):
    randomize_zero_modules(tiny, std=0.2)
    image_features, degra = tiny.encode_image(images, control=True)
    ref_image, ref_degra = _manual_controlled(tiny, images, reverse=True)
    wrong_image, _ = _manual_controlled(tiny, images, reverse=False)
    assert (image_features - ref_image).abs().max().item() <= 1e-6
    assert (degra - ref_degra).abs().max().item() <= 1e-6
    # Forward-order injection is a different model: the outputs move by O(1).
    assert (image_features - wrong_image).abs().max().item() > 0.1


@torch.no_grad()
def test_degradation_features_are_the_controller_tower_output(tiny, images):
    randomize_zero_modules(tiny)
    _, degra = tiny.encode_image(images, control=True)
    assert (degra - tiny.visual_control(images)).abs().max().item() == 0.0


@torch.no_grad()
def test_forward_splits_text_and_normalises(tiny, images):
    tok = daclip_lora.get_tokenizer(TINY)
    text = torch.cat([tok(["a photo of a cat", "a dog"]), tok(["noisy", "rainy"])], dim=-1)
    assert text.shape == (2, 154)
    out = tiny(images, text)
    assert set(out) == {"image_features", "text_features", "image_degra_features",
                        "text_degra_features", "logit_scale"}
    for key in ("image_features", "text_features", "image_degra_features", "text_degra_features"):
        assert out[key].shape == (2, 64)
        assert torch.allclose(out[key].norm(dim=-1), torch.ones(2), atol=1e-5)
    expected_degra = F.normalize(tiny.encode_text(tok(["noisy", "rainy"])), dim=-1)
    assert (out["text_degra_features"] - expected_degra).abs().max().item() <= 1e-6
    assert out["logit_scale"].item() == pytest.approx(tiny.logit_scale.exp().item())


def test_initial_controller_copies_clip_vision_and_keeps_zero_modules(tiny):
    with torch.no_grad():
        for p in tiny.clip.visual.parameters():
            p.add_(1.0)
        tiny.clip.logit_scale.fill_(2.5)
    tiny.initial_controller()
    clip_sd = tiny.clip.visual.state_dict()
    ctrl_sd = tiny.visual_control.state_dict()
    for key, value in clip_sd.items():
        ctrl_key = key.replace("transformer.", "transformer.transformer.", 1) if key.startswith("transformer.") else key
        assert torch.equal(ctrl_sd[ctrl_key], value), key
    zero_keys = [k for k in ctrl_sd if "zero_modules" in k]
    assert len(zero_keys) == 2 * 4
    assert all(ctrl_sd[k].abs().sum().item() == 0 for k in zero_keys)
    assert tiny.logit_scale.item() == 2.5


def test_lock_clip_leaves_only_controller_and_logit_scale_trainable(tiny):
    trainable = [n for n, p in tiny.named_parameters() if p.requires_grad]
    assert trainable, "the controller must stay trainable"
    assert all(n.startswith("visual_control.") or n == "logit_scale" for n in trainable)
    assert "logit_scale" in trainable
    assert sum(p.numel() for p in tiny.clip.parameters() if p.requires_grad) == 0


def test_gradients_reach_only_the_controller(tiny, images):
    tiny.train()
    randomize_zero_modules(tiny)
    image_features, degra = tiny.encode_image(images, control=True, normalize=True)
    (image_features.sum() + degra.sum()).backward()
    with_grad = {n for n, p in tiny.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith("visual_control.") for n in with_grad)
    assert any("zero_modules" in n for n in with_grad)


def test_grad_checkpointing_gives_same_outputs_and_grads(images):
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = randomize_zero_modules(daclip_lora.create_model(TINY)).train()
        model.set_grad_checkpointing(enable)
        assert model.visual_control.transformer.grad_checkpointing is enable
        assert model.clip.visual.transformer.grad_checkpointing is enable
        image_features, degra = model.encode_image(images, control=True)
        (image_features.square().sum() + degra.square().sum()).backward()
        grads.append((image_features.detach(), model.visual_control.conv1.weight.grad.clone()))
    assert (grads[0][0] - grads[1][0]).abs().max().item() <= 1e-6
    assert (grads[0][1] - grads[1][1]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("precision,dtype,tol", [
    ("bf16", torch.bfloat16, 0.1),
    ("fp16", torch.float16, 0.02),
    ("pure_bf16", torch.bfloat16, 0.1),
])
@torch.no_grad()
def test_low_precision_matches_fp32(precision, dtype, tol, images):
    torch.manual_seed(0)
    ref = randomize_zero_modules(daclip_lora.create_model(TINY))
    torch.manual_seed(0)
    low = randomize_zero_modules(daclip_lora.create_model(TINY, precision=precision))
    assert low.visual_control.transformer.zero_modules[0].weight.dtype == dtype
    ref_img, ref_deg = ref.encode_image(images, control=True, normalize=True)
    img, deg = low.encode_image(images.to(dtype), control=True, normalize=True)
    assert img.dtype == dtype
    assert (img.float() - ref_img).abs().max().item() < tol
    assert (deg.float() - ref_deg).abs().max().item() < tol


@pytest.mark.parametrize("kwargs,size", [({}, (224, 224)), ({"force_image_size": 64}, (64, 64)),
                                         ({"force_image_size": (64, 96)}, (64, 96))])
def test_image_size_is_the_vision_towers_input_size(kwargs, size):
    assert daclip_lora.create_model(TINY, **kwargs).image_size == size


def test_rejects_vision_tower_with_patch_dropout():
    with pytest.raises(ValueError, match="patch dropout"):
        daclip_lora.create_model(TINY, force_patch_dropout=0.5)


def test_control_signal_count_is_checked(tiny, images):
    with pytest.raises(ValueError, match="got 3 control signals for a vision tower with 4 blocks"):
        tiny.encode_controlled(images, [torch.zeros(1)] * 3)
