"""Base families: SD 1.x, SD 2.x (v-prediction), SD-Turbo and SDXL, each a tiny diffusers folder of the family's
structure. Each trains 2 steps, saves, loads, restores tiled and untiled (and guided), and its LoRA file loads into
the family's diffusers pipeline. Folders of other architectures get one line."""

import json
import shutil

import diffusers
import pytest
import torch

from daclip_lora.restoration.backbone import SDBackbone, SDXLBackbone, load_sd_components
from daclip_lora.restoration.pipeline import RestorationPipeline
from daclip_lora.tiny.sd import build_tiny_sd
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer

from conftest import SD_DEGS

#: family -> (objective, one_step_t): SD-Turbo is a one-step model at t = 999; the others train the diffusion
#: objective (v-prediction for sd2-v) or one step from a small t
FAMILIES = {"sd1": ("diffusion", 50), "sd2-v": ("diffusion", 50), "sd-turbo": ("one_step", 999),
            "sdxl": ("one_step", 50)}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_tiny_sd(root / family, seed=0, family=family) for family in FAMILIES}


@pytest.fixture(scope="module")
def trained(bases, sd_assets, tmp_path_factory):
    """Each family's restoration folder after 2 training steps (module scope: one training run per family)."""
    out = {}
    for family, (objective, t) in FAMILIES.items():
        root = tmp_path_factory.mktemp(family)
        yml = root / "train.yml"
        yml.write_text(f"""name: {family}
task: restoration
distortion: [{', '.join(SD_DEGS)}]
datasets:
  train: {{mode: MD, dataroot: {sd_assets / 'ds' / 'train'}, batch_size: 2, patch_size: 32}}
daclip: {{model: daclip_tiny}}
sd:
  base: {bases[family]}
  lora: {{rank: 4, alpha: 4}}
  objective: {objective}
  one_step_t: {t}
  conditioning: {{num_tokens: 2, time_embedding: true}}
train: {{lr_G: 0.002, niter: 2, warmup_iter: 0, val_freq: 0, manual_seed: 0}}
logger: {{print_freq: 100, save_checkpoint_freq: 2}}
runtime: {{device: cpu, cache: true}}
""")
        opt = load_options(yml, is_train=True, root=root)
        result = Engine(opt, RestorationTrainer(opt)).fit()
        out[family] = (root / "experiments" / family / "models" / "restoration", result.losses)
    return out


@pytest.mark.parametrize("family, backbone, prediction", [
    ("sd1", SDBackbone, "epsilon"), ("sd2-v", SDBackbone, "v_prediction"), ("sd-turbo", SDBackbone, "epsilon"),
    ("sdxl", SDXLBackbone, "epsilon"),
])
def test_each_family_loads_as_its_backbone(bases, family, backbone, prediction):
    b = SDBackbone.load(bases[family])
    assert type(b) is backbone and b.prediction_type == prediction
    assert len(b.text_encoders) == (2 if family == "sdxl" else 1)


def test_sd_turbo_keeps_its_trailing_timesteps(bases):
    config = json.loads((bases["sd-turbo"] / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "EulerDiscreteScheduler" and config["timestep_spacing"] == "trailing"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_two_finite_steps(trained, family):
    folder, losses = trained[family]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (folder / "restoration.json").is_file() and (folder / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_restores_tiled_like_untiled_in_shape_and_range(trained, family):
    pipe = RestorationPipeline.from_pretrained(trained[family][0], device="cpu")
    lq = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    whole = pipe(lq, steps=2, tile_size=0)
    tiled = pipe(lq, steps=2, tile_size=32, tile_overlap=8)
    for out in (whole, tiled):
        assert out.shape == lq.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert (whole - tiled).abs().mean() < 0.2  # tiles blend into the same picture, not another one


def test_sdxl_guided_tiled_restoration_builds_added_conditions_per_call(trained):
    """Under guidance, k tiles of b images make a UNet batch of 2 k b: every call gets matching time ids and
    pooled text (the UNet would fail on a mismatch)."""
    pipe = RestorationPipeline.from_pretrained(trained["sdxl"][0], device="cpu")
    seen = []
    unet = pipe.model.unet
    hook = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(
        (a[0].shape[0], kw["added_cond_kwargs"]["time_ids"].shape, kw["added_cond_kwargs"]["text_embeds"].shape[0],
         kw["added_cond_kwargs"]["time_ids"][0, :2].tolist(), a[0].shape[-2:])), with_kwargs=True)
    try:
        pipe(torch.rand(2, 3, 64, 64), guidance_scale=2.0, tile_size=32, tile_overlap=0)
    finally:
        hook.remove()
    assert seen
    for batch, ids_shape, pooled_rows, size, latent in seen:
        assert ids_shape == (batch, 6) and pooled_rows == batch and batch % 4 == 0  # 2 images x 2 (guidance)
        assert size == [latent[0] * pipe.vae_factor, latent[1] * pipe.vae_factor]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_lora_loads_into_its_diffusers_pipeline(bases, trained, family):
    folder = trained[family][0]
    pipe_class = getattr(diffusers, SDBackbone.load(bases[family]).pipeline_class)
    pipe = pipe_class.from_pretrained(str(bases[family]))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(folder))
    lora = {k: v for k, v in pipe.unet.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().max() > 0 for v in lora.values())  # trained, non-zero B matrices arrived
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items() if k in pipe.unet.state_dict())


@pytest.mark.parametrize("change, message", [
    ({"in_channels": 9}, r"takes 9 channels .* an inpainting \(9\)"),
    ({"addition_embed_type": "text"}, r"addition_embed_type 'text' .* not a family daclip_lora knows"),
])
def test_a_folder_of_another_architecture_gets_one_line(bases, tmp_path, change, message):
    folder = tmp_path / "other"
    shutil.copytree(bases["sd1"], folder)
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    for weights in (folder / "unet").glob("*.safetensors"):  # shapes change with the config: random init
        weights.unlink()
    diffusers.UNet2DConditionModel.from_config(json.loads(config.read_text())).save_pretrained(str(folder / "unet"))
    with pytest.raises(ValueError, match=message):
        load_sd_components(folder)


def test_the_sdxl_refiner_gets_one_line(bases, tmp_path):
    folder = tmp_path / "refiner"
    shutil.copytree(bases["sdxl"], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["projection_class_embeddings_input_dim"] = 5 * config["addition_time_embed_dim"] + 32
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    diffusers.UNet2DConditionModel.from_config(config).save_pretrained(str(folder / "unet"))
    with pytest.raises(ValueError, match="the SDXL refiner .* is not supported"):
        load_sd_components(folder)
