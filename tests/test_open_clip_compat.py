"""`import daclip_lora as open_clip` drop-in, transforms, and the opt-in open_clip registration."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import daclip_lora
from conftest import TINY, randomize_zero_modules

UIR_NAMES = ["create_model_from_pretrained", "create_model_and_transforms", "create_model", "get_tokenizer",
             "tokenize", "list_models", "image_transform", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD",
             "ClipLoss", "SimpleTokenizer", "load_checkpoint", "add_model_config", "get_model_config"]


@pytest.mark.parametrize("name", UIR_NAMES)
def test_drop_in_names(name):
    assert getattr(daclip_lora, name) is not None


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="has no attribute 'not_a_thing'"):
        daclip_lora.not_a_thing


@pytest.fixture
def checkpoint(tiny, tmp_path):
    randomize_zero_modules(tiny)
    path = tmp_path / "daclip_tiny.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": tiny.state_dict()}, path)
    return tiny, path


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))


def test_from_pretrained_returns_model_and_openai_eval_transform(checkpoint, photo):
    _, path = checkpoint
    model, preprocess = daclip_lora.create_model_from_pretrained(TINY, pretrained=str(path))
    assert isinstance(model, daclip_lora.DaCLIP) and not model.training
    reference = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    assert torch.equal(preprocess(photo), reference(photo))
    assert preprocess(photo).shape == (3, 224, 224)


def test_create_model_and_transforms_for_daclip(photo):
    model, train_t, val_t = daclip_lora.create_model_and_transforms(TINY)
    assert isinstance(model, daclip_lora.DaCLIP)
    assert train_t(photo).shape == val_t(photo).shape == (3, 224, 224)


@pytest.fixture
def registered(monkeypatch):
    """register_with_open_clip() for one test; monkeypatch restores open_clip afterwards."""
    for ns in (open_clip, open_clip.factory):
        for name in ("create_model", "get_tokenizer", "list_models"):
            monkeypatch.setattr(ns, name, getattr(ns, name))
    daclip_lora.register_with_open_clip()
    daclip_lora.register_with_open_clip()  # idempotent


@torch.no_grad()
def test_open_clip_loads_daclip_after_registration(registered, checkpoint, photo):
    tiny, path = checkpoint
    model, preprocess = open_clip.create_model_from_pretrained(TINY, pretrained=str(path))
    assert isinstance(model, daclip_lora.DaCLIP)
    image = preprocess(photo)[None]
    for a, b in zip(model.encode_image(image, control=True), tiny.encode_image(image, control=True)):
        assert (a - b).abs().max().item() == 0.0
    assert TINY in open_clip.list_models()
    assert torch.equal(open_clip.get_tokenizer(TINY)(["rainy"]), open_clip.tokenize(["rainy"]))
    model, _, _ = open_clip.create_model_and_transforms(TINY)
    assert isinstance(model, daclip_lora.DaCLIP)


def test_registration_keeps_stock_models(registered):
    model = open_clip.create_model("RN50", device="meta")
    assert type(model) is open_clip.CLIP
    assert open_clip.factory.create_model is daclip_lora.create_model
    assert daclip_lora.clip.factory._OPEN_CLIP["create_model"] is not daclip_lora.create_model


def test_without_registration_open_clip_does_not_know_daclip():
    with pytest.raises(RuntimeError, match="daclip_tiny"):
        open_clip.create_model(TINY)
