"""DA-CLIP's view of large images: the degradation embedding is the mean over native-resolution crops (the scale
DA-CLIP's embeddings were learned at), not a thumbnail of the whole image."""

import numpy as np
import pytest
import torch

from daclip_lora.data.datasets import clip_batch, clip_crops, crop_grid, degradation_embeddings


@pytest.mark.parametrize("length,crop,most,starts", [
    (100, 100, 3, [0]),
    (150, 100, 3, [0, 50]),
    (300, 100, 3, [0, 100, 200]),
    (1000, 100, 3, [0, 450, 900]),  # capped at 3 per side, spread to both ends
    (1000, 100, 1, [0]),
])
def test_crop_grid_spreads_crops_from_edge_to_edge(length, crop, most, starts):
    assert crop_grid(length, crop, most) == starts


def test_an_image_no_larger_than_the_crop_is_one_resized_view():
    images = torch.rand(2, 3, 48, 80)
    views, k = clip_crops(images, 32, crop=64)
    assert k == 1 and torch.equal(views, clip_batch(images, 32))


def test_crops_are_cut_at_native_resolution():
    images = torch.rand(1, 3, 120, 300)
    views, k = clip_crops(images, 40, crop=40)
    assert k == 9 and views.shape == (9, 3, 40, 40)
    # a crop of the model's own size is not resampled: the first and last views are the corners themselves
    assert torch.allclose(views[0], clip_batch(images[:, :, :40, :40], 40)[0])
    assert torch.allclose(views[-1], clip_batch(images[:, :, -40:, -40:], 40)[0])


class _Recorder(torch.nn.Module):
    """A stand-in DA-CLIP whose degradation embedding is the mean of its input view (one number per image)."""

    image_size = (16, 16)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def encode_image(self, x, control=True):
        d = x.mean(dim=(1, 2, 3))[:, None] * self.w
        return d, d


def test_degradation_embedding_is_the_mean_over_the_crops():
    images = torch.rand(2, 3, 64, 96)
    views, k = clip_crops(images, 16, crop=32)
    expected = views.mean(dim=(1, 2, 3)).view(2, k).mean(dim=1)
    got = degradation_embeddings(_Recorder(), images, crop=32)
    assert k == 6 and torch.allclose(got[:, 0], expected)


def test_the_pipeline_reads_a_large_image_through_the_crops():
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import embedded_restorer

    pipe = RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu")
    assert pipe.config.daclip_crop == 64  # the demo's training patch, recorded by training
    large = torch.rand(1, 3, 160, 192)
    with torch.no_grad():
        _, degradation = pipe.daclip_embeddings(large)
        expected = degradation_embeddings(pipe.daclip, large, 64)
        _, thumbnail = pipe.daclip.encode_image(clip_batch(large, pipe.daclip.image_size), control=True)
    assert torch.allclose(degradation, expected) and not torch.allclose(degradation, thumbnail)


def test_a_large_noisy_photograph_reads_as_noisy_through_the_crops():
    """The shipped models on a full-size noisy photograph they never saw: the crops see the noise, the
    thumbnail (the whole 300-px image shrunk) does not."""
    from daclip_lora.clip.factory import get_tokenizer, load_daclip
    from daclip_lora.clip.zero_shot import DegradationProbabilities
    from daclip_lora.data.degrade import DEGRADATIONS, degrade
    from daclip_lora.restoration.serialization import read_restoration_config
    from daclip_lora.tiny.locate import embedded_restorer

    from skimage import data

    config = read_restoration_config(embedded_restorer())
    model = load_daclip(config.daclip_model, config.daclip_pretrained, config.daclip_adapter).eval()
    probs = DegradationProbabilities(model, get_tokenizer(config.daclip_model), list(DEGRADATIONS))
    clean = data.chelsea().astype(np.float32) / 255.0
    noisy = torch.from_numpy(degrade(clean, "noisy", seed=0).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        crops = probs.from_embeddings(degradation_embeddings(model, noisy, config.daclip_crop))[0]
        thumbnail = probs.from_embeddings(model.encode_image(clip_batch(noisy, model.image_size), control=True)[1])[0]
    assert DEGRADATIONS[int(crops.argmax())] == "noisy" and DEGRADATIONS[int(thumbnail.argmax())] != "noisy"
