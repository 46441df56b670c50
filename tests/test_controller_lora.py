"""Controller LoRA: attachment, counts, save/load/merge, training step, loss, resume, bad specs."""

import json

import pytest
import torch

import daclip_lora
from daclip_lora.apps.cli import main
from daclip_lora.data.synthetic import make_dataset
from daclip_lora.training.engine import Engine
from daclip_lora.clip.lora import (AdapterError, add_controller_lora, load_controller_lora, merge_controller_lora,
                              save_controller_lora)
from daclip_lora.training.options import LoraOptions, load_options
from daclip_lora.clip.loss import daclip_loss
from daclip_lora.training.tasks.controller import ControllerTrainer
from conftest import TINY

DEGS = ["noisy", "low-light", "hazy"]


def _perturb_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name,limit", [("daclip_ViT-B-32", 2.0), ("daclip_ViT-L-14", 2.0)])
def test_rank8_trainable_share_on_meta(name, limit):
    model = daclip_lora.create_model(name, device="meta")
    report = add_controller_lora(model, LoraOptions(rank=8))
    assert report.percent < limit
    assert report.reference == sum(p.numel() for n, p in model.visual_control.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("zero_modules,n_extra", [("lora", 1), ("train", 1 + 4 * (64 * 64 + 64)), ("frozen", 1)])
def test_only_lora_and_chosen_extras_are_trainable(tiny, zero_modules, n_extra):
    report = add_controller_lora(tiny, LoraOptions(rank=4), zero_modules=zero_modules)
    trainable = [n for n, p in tiny.named_parameters() if p.requires_grad]
    assert all(n.startswith("visual_control.") or n == "logit_scale" for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("visual_control.") and "zero_modules" not in n)
    assert report.extras == n_extra
    assert any("zero_modules" in n and "lora_" in n for n in trainable) == (zero_modules == "lora")


@torch.no_grad()
def test_fresh_lora_leaves_outputs_unchanged(tiny, images):
    before = tiny.encode_image(images, control=True)
    add_controller_lora(tiny, LoraOptions(rank=4))
    after = tiny.encode_image(images, control=True)
    assert max((a - b).abs().max().item() for a, b in zip(before, after)) == 0.0


@torch.no_grad()
def test_save_load_round_trip_is_exact(tiny, images, tmp_path):
    add_controller_lora(tiny, LoraOptions(rank=4), zero_modules="train")
    _perturb_lora(tiny)
    tiny.logit_scale.fill_(3.3)
    tiny.visual_control.transformer.zero_modules[1].weight.fill_(0.01)
    expected = tiny.encode_image(images, control=True)
    path = save_controller_lora(tiny, tmp_path / "adapter", model_name=TINY)
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "controller_extras.safetensors", "daclip_lora_adapter.json"]
    torch.manual_seed(0)
    fresh = daclip_lora.create_model(TINY)  # same base weights as `tiny`
    load_controller_lora(fresh, path)
    got = fresh.encode_image(images, control=True)
    assert max((a - b).abs().max().item() for a, b in zip(expected, got)) == 0.0
    assert fresh.logit_scale.item() == pytest.approx(3.3)


def test_saved_adapter_loads_with_plain_peft(tiny, tmp_path):
    from peft import PeftModel

    add_controller_lora(tiny, LoraOptions(rank=4))
    _perturb_lora(tiny)
    path = save_controller_lora(tiny, tmp_path / "adapter")
    torch.manual_seed(0)
    base = daclip_lora.create_model(TINY)
    peft_model = PeftModel.from_pretrained(base.visual_control, str(path))
    ours = dict(tiny.visual_control.named_parameters())
    theirs = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert theirs and all(torch.equal(ours[n], p) for n, p in theirs.items())


@torch.no_grad()
def test_merge_matches_unmerged_and_restores_plain_layout(tiny, images):
    plain_keys = {k: v.shape for k, v in tiny.state_dict().items()}
    add_controller_lora(tiny, LoraOptions(rank=4))
    _perturb_lora(tiny)
    unmerged = tiny.encode_image(images, control=True)
    merge_controller_lora(tiny)
    merged = tiny.encode_image(images, control=True)
    assert max((a - b).abs().max().item() for a, b in zip(unmerged, merged)) <= 1e-5
    assert {k: v.shape for k, v in tiny.state_dict().items()} == plain_keys


@torch.no_grad()
def test_convert_with_adapter_writes_plain_daclip_checkpoint(tiny, images, tmp_path):
    base = tmp_path / "base.safetensors"
    daclip_lora.clip.checkpoint.save_model(tiny, base, TINY)
    add_controller_lora(tiny, LoraOptions(rank=4))
    _perturb_lora(tiny)
    expected = tiny.encode_image(images, control=True)
    adapter = save_controller_lora(tiny, tmp_path / "adapter")
    out = tmp_path / "merged.safetensors"
    assert main(["convert", str(base), str(out), "--adapter", str(adapter), "--model", TINY]) == 0
    loaded = daclip_lora.create_model(TINY, pretrained=str(out))
    got = loaded.encode_image(images, control=True)
    assert max((a - b).abs().max().item() for a, b in zip(expected, got)) <= 1e-5


@pytest.mark.parametrize("spec,kwargs,pattern", [
    (LoraOptions(rank=0), {}, r"controller.lora.rank must be an integer >= 1, got 0"),
    (LoraOptions(targets=["attn.out_proj"]), {}, r"unknown controller LoRA target 'attn.out_proj' .*never called"),
    (LoraOptions(targets=["mlp.fc"]), {}, r"unknown controller LoRA target 'mlp.fc'.*Did you mean: mlp.c_fc"),
    (LoraOptions(blocks=[]), {}, r"blocks is empty: the adapter would match no module"),
    (LoraOptions(blocks=[7]), {}, r"LoRA blocks \[7\] do not exist: the controller has blocks 0-3"),
    (LoraOptions(), {"zero_modules": "trian"}, r"zero_modules must be one of .*Did you mean: train"),
])
def test_bad_lora_specs(tiny, spec, kwargs, pattern):
    with pytest.raises(AdapterError, match=pattern):
        add_controller_lora(tiny, spec, **kwargs)


def test_adapter_for_another_architecture_is_refused(tiny, tmp_path):
    add_controller_lora(tiny, LoraOptions(rank=4))
    path = save_controller_lora(tiny, tmp_path / "adapter")
    cfg = json.loads((daclip_lora.clip.registry._builtin_config_dir() / "daclip_tiny.json").read_text())
    cfg["vision_cfg"]["width"] = 32
    (tmp_path / "daclip_narrow.json").write_text(json.dumps(cfg))
    daclip_lora.add_model_config(tmp_path / "daclip_narrow.json")
    with pytest.raises(AdapterError, match=r"does not fit this model: .*other shapes"):
        load_controller_lora(daclip_lora.create_model("daclip_narrow"), path)


def test_label_aware_loss_is_cross_entropy_over_the_vocabulary():
    torch.manual_seed(0)
    f = lambda *s: torch.nn.functional.normalize(torch.randn(*s), dim=-1)  # noqa: E731
    out = {"image_features": f(4, 8), "image_degra_features": f(4, 8), "text_degra_features": f(4, 8),
           "logit_scale": torch.tensor(10.0)}
    classes, labels = f(3, 8), torch.tensor([0, 2, 2, 1])
    got = daclip_loss(out, "label_aware", labels=labels, class_text=classes)
    expected = torch.nn.functional.cross_entropy(10.0 * out["image_degra_features"] @ classes.T, labels)
    assert got["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    ref = daclip_loss(out, "reference")
    assert "contrastive_loss" not in ref and ref["loss"].item() > 0


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctrl")
    make_dataset(root / "ds", size=8, val_size=2, patch_size=32, distortions=DEGS, seed=0)
    return root / "ds"


def _opt(tmp_path, data, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    yml = tmp_path / "ctrl.yml"
    yml.write_text(f"""name: t
task: controller
distortion: [{', '.join(DEGS)}]
datasets:
  train: {{mode: CSV, csv: {data / 'daclip_train.csv'}, batch_size: 8}}
  val: {{mode: MD, dataroot: {data / 'val'}}}
daclip: {{model: {TINY}}}
controller:
  lora: {{rank: 4, alpha: 8}}
train: {{lr_G: 0.003, niter: 6, warmup_iter: 0, val_freq: 0, manual_seed: 1}}
logger: {{print_freq: 100, save_checkpoint_freq: 3}}
runtime: {{device: cpu}}
""")
    return load_options(yml, is_train=True, root=tmp_path, overrides=list(overrides))


def test_training_steps_change_only_lora_and_keep_frozen_weights_bitwise(tmp_path, data):
    # Several steps: peft's MHA LoRA merges/unmerges into the frozen weights on every forward.
    opt = _opt(tmp_path, data, "train.niter=4")
    trainer = ControllerTrainer(opt)
    clip_before = {k: v.clone() for k, v in trainer.model.clip.state_dict().items()}
    frozen_before = {n: p.clone() for n, p in trainer.model.visual_control.named_parameters() if not p.requires_grad}
    lora_before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    Engine(opt, trainer).fit()
    assert all(torch.equal(v, trainer.model.clip.state_dict()[k]) for k, v in clip_before.items())
    now = dict(trainer.model.named_parameters())
    assert all(torch.equal(p, now["visual_control." + n]) for n, p in frozen_before.items())
    changed = [n for n, p in lora_before.items() if not torch.equal(p, now[n])]
    assert changed and all("lora_" in n or n == "logit_scale" for n in changed)


def test_loss_decreases_on_tiny_overfit(tmp_path, data):
    opt = _opt(tmp_path, data, "train.niter=40", "train.lr_G=0.005", "controller.caption_weight=0.0")
    result = Engine(opt, ControllerTrainer(opt)).fit()
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)



def test_controller_trains_and_evaluates_at_the_models_input_size(tmp_path, data):
    """A registered DA-CLIP with 64 px inputs gets 64 px images (not the usual 224) in training and validation."""
    cfg = json.loads((daclip_lora.clip.registry._builtin_config_dir() / "daclip_tiny.json").read_text())
    cfg["vision_cfg"].update(image_size=64, patch_size=8)
    (tmp_path / "daclip_tiny64.json").write_text(json.dumps(cfg))
    daclip_lora.add_model_config(tmp_path / "daclip_tiny64.json")
    opt = _opt(tmp_path, data, "daclip.model=daclip_tiny64", "train.niter=2")
    trainer = ControllerTrainer(opt)
    assert tuple(trainer.train_dataset()[0]["image_clip"].shape) == (3, 64, 64)
    Engine(opt, trainer).fit()
    assert tuple(trainer._val[0][0]["image_clip"].shape) == (3, 64, 64)
    accuracy = trainer.validate(2, tmp_path)["acc_val"]
    assert 0.0 <= accuracy <= 1.0

def test_resume_reproduces_the_next_losses_exactly(tmp_path, data):
    full = Engine(o := _opt(tmp_path / "a", data), ControllerTrainer(o)).fit()  # checkpoints at 3 and 6
    state = tmp_path / "a" / "experiments" / "t" / "training_state" / "00000003"
    resumed_opt = _opt(tmp_path / "b", data, f"path.resume_state={state}")
    resumed = Engine(resumed_opt, ControllerTrainer(resumed_opt)).fit()
    assert len(full.losses) == 6 and len(resumed.losses) == 3
    assert resumed.losses == full.losses[3:]


def test_cli_train_then_test(tmp_path, data, capsys):
    opt = _opt(tmp_path, data)  # writes ctrl.yml
    assert main(["train", "-opt", str(tmp_path / "ctrl.yml"), "--root", str(tmp_path), "--opt", "train.niter=2"]) == 0
    adapter = tmp_path / "experiments" / "t" / "models" / "controller_lora"
    assert (adapter / "adapter_model.safetensors").is_file() and (tmp_path / "experiments/t/options.yml").is_file()
    assert main(["test", "-opt", str(tmp_path / "ctrl.yml"), "--root", str(tmp_path), "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert "zero-shot degradation accuracy" in out and "overall" in out
    report = json.loads((tmp_path / "results/t/val_degradation_accuracy.json").read_text())
    assert report["classes"] == DEGS and sum(report["counts"].values()) == 2 * len(DEGS)
    assert opt.name == "t"


def test_a_checkpoint_exports_to_the_runs_adapter(tmp_path, data):
    from safetensors.torch import load_file

    _opt(tmp_path, data)  # writes ctrl.yml: 6 steps, checkpoints at 3 and 6
    assert main(["train", "-opt", str(tmp_path / "ctrl.yml"), "--root", str(tmp_path)]) == 0
    run = tmp_path / "experiments" / "t"
    assert main(["export", "--checkpoint", str(run / "training_state" / "00000006"), "--output",
                 str(tmp_path / "exported")]) == 0
    name = "adapter_model.safetensors"
    exported, final = (load_file(str(p / name)) for p in (tmp_path / "exported", run / "models" / "controller_lora"))
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
