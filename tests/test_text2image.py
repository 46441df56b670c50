"""Text-to-image LoRA on a caption folder: trains, renders, CLIP-scores; short flags; resume keeps LoRA-only."""

import json

import pytest
import torch

from daclip_lora.apps.cli import _load_cli_options, build_parser, main
from daclip_lora.data.images import write_image
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.tiny.sd import build_tiny_sd
from daclip_lora.training.tasks.text2image import Text2ImageTrainer, clip_score


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    build_tiny_sd(root / "tiny_sd")
    g = torch.Generator().manual_seed(0)
    for i, caption in enumerate(["a red square", "a blue circle\non white", "a green line", "a dark room"]):
        write_image(root / "caps" / f"img{i}.png", torch.rand(40, 48, 3, generator=g).numpy())
        (root / "caps" / f"img{i}.txt").write_text(caption)
    (root / "prompts.txt").write_text("a red square\n\na blue circle\n")
    (root / "t2i.yml").write_text(f"""name: t
task: text2image
datasets:
  train: {{mode: captions, dataroot: {root / 'caps'}, batch_size: 2}}
daclip: {{model: daclip_tiny}}
sd:
  base: {root / 'tiny_sd'}
  resolution: 32
  lora: {{rank: 4, alpha: 4}}
  text_encoder_lora: {{rank: 2, alpha: 2}}
  validation_prompts: {root / 'prompts.txt'}
train: {{lr_G: 0.001, niter: 4, warmup_iter: 0, val_freq: 4, manual_seed: 0}}
logger: {{save_checkpoint_freq: 2}}
runtime: {{device: cpu}}
sampling: {{steps: 2}}
""")
    return root


def test_caption_folder_trains_renders_and_clip_scores(assets, tmp_path, capsys):
    assert main(["train", "-opt", str(assets / "t2i.yml"), "--root", str(tmp_path)]) == 0
    val = tmp_path / "experiments/t/val_images/00000004"
    assert sorted(p.name for p in val.glob("*.png")) == ["000.png", "001.png"]
    scores = json.loads((val / "clip_scores.json").read_text())
    assert list(scores) == ["a red square", "a blue circle"] and all(0 <= s <= 100 for s in scores.values())
    lora = tmp_path / "experiments/t/models/text2image_lora/pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file

    keys = load_file(str(lora)).keys()
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    assert "clip_score" in capsys.readouterr().out


def test_short_flags_become_typed_overrides(assets, tmp_path):
    args = build_parser().parse_args(["train", "-opt", str(assets / "t2i.yml"), "-d", str(assets / "caps"),
                                      "-gp", str(assets / "prompts.txt"), "-e", "7", "-b", "4", "-u", "2e-4",
                                      "-t", "5e-5", "--root", str(tmp_path)])
    opt = _load_cli_options(args, is_train=True)
    assert (opt.train.niter, opt.datasets["train"].batch_size) == (7, 4)
    assert opt.train.lr_G == pytest.approx(2e-4) and opt.sd.text_encoder_lr == pytest.approx(5e-5)


def test_text_encoder_gets_its_own_learning_rate(assets, tmp_path):
    opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path, overrides=["sd.text_encoder_lr=1e-5"])
    groups = Text2ImageTrainer(opt).param_groups()
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-5)]
    assert all("lora_" in n for g in groups for n, _ in g["params"])


def test_resume_keeps_only_lora_trainable(assets, tmp_path):
    opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path / "a", overrides=["train.val_freq=0"])
    full = Engine(opt, Text2ImageTrainer(opt)).fit()
    state = tmp_path / "a/experiments/t/training_state/00000002"
    resumed_opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path / "b",
                               overrides=["train.val_freq=0", f"path.resume_state={state}"])
    trainer = Text2ImageTrainer(resumed_opt)
    resumed = Engine(resumed_opt, trainer).fit()
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert resumed.losses == full.losses[2:]


def test_clip_score_with_a_plain_clip_config(tmp_path):
    import numpy as np

    from daclip_lora import add_model_config, get_model_config

    cfg = {**get_model_config("daclip_tiny"), "family": "clip"}
    (tmp_path / "tinyclip.json").write_text(json.dumps(cfg))
    add_model_config(tmp_path / "tinyclip.json")
    images = [np.random.default_rng(i).random((32, 32, 3)).astype(np.float32) for i in range(2)]
    scores = clip_score(images, ["a cat", "a dog"], "tinyclip")
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)


def test_text2image_needs_a_caption_folder(assets, tmp_path):
    opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path, check_paths=False,
                       overrides=["datasets.train.mode=LQGT", "datasets.train.dataroot_LQ=x", "datasets.train.dataroot_GT=y"])
    with pytest.raises(ValueError, match="set datasets.train.mode to captions"):
        Text2ImageTrainer(opt)


def test_text_encoder_lora_targets_matching_nothing(assets, tmp_path):
    opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path,
                       overrides=["sd.text_encoder_lora.targets=[qproj]"])
    with pytest.raises(ValueError, match=r"text-encoder LoRA targets \['qproj'\] match no module.*q_proj"):
        Text2ImageTrainer(opt)


def test_an_sdxl_base_is_refused_in_one_line(assets, tmp_path):
    build_tiny_sd(tmp_path / "tiny_sdxl", family="sdxl")
    opt = load_options(assets / "t2i.yml", is_train=True, root=tmp_path,
                       overrides=[f"sd.base={tmp_path / 'tiny_sdxl'}", "sd.text_encoder_lora=null"])
    with pytest.raises(ValueError, match=r"task text2image trains SD 1.x/2.x bases; sd.base .* is sdxl"):
        Text2ImageTrainer(opt)


def test_a_checkpoint_exports_to_the_runs_lora_file(assets, tmp_path):
    from safetensors.torch import load_file

    assert main(["train", "-opt", str(assets / "t2i.yml"), "--root", str(tmp_path), "--opt",
                 "train.val_freq=0"]) == 0
    run = tmp_path / "experiments" / "t"
    assert main(["export", "--checkpoint", str(run / "training_state" / "00000004"), "--output",
                 str(tmp_path / "exported")]) == 0
    name = "pytorch_lora_weights.safetensors"
    exported, final = (load_file(str(p / name)) for p in (tmp_path / "exported", run / "models" / "text2image_lora"))
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
