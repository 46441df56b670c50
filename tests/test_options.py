"""UIR option files load unchanged; every bad option gets one clear message; the loader is pure."""

import logging
import os
from pathlib import Path

import pytest

from daclip_lora.training.options import OptionsError, load_options, options_to_dict

DATA = Path(__file__).parent / "data"


def test_uir_test_yml_loads_unchanged(tmp_path):
    opt = load_options(DATA / "uir_test.yml", is_train=False, root=tmp_path, check_paths=False)
    assert opt.name == "universal-ir" and not opt.is_train and opt.model == "denoising"
    assert len(opt.distortion) == 10 and opt.gpu_ids == [0] and opt.suffix is None
    ds = opt.datasets["test1"]
    assert (ds.mode, ds.phase, ds.name) == ("LQGT", "test", "Test")
    assert ds.dataroot_LQ == "/home/ziwlu/datasets/universal/val/snowy/LQ"
    assert opt.extra["sde"]["sampling_mode"] == "posterior"
    assert opt.extra["network_G"]["setting"]["ch_mult"] == [1, 2, 4, 8]
    assert opt.path.results_root == str(tmp_path / "results" / "universal-ir") == opt.path.log
    assert opt.daclip.pretrained == "pretrained/daclip_ViT-B-32.pt"  # from path.daclip


def test_uir_train_yml_loads_unchanged(tmp_path):
    opt = load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False)
    assert opt.is_train and opt.train.lr_G == pytest.approx(2e-4) and opt.train.eta_min == pytest.approx(1e-7)
    assert opt.train.val_freq == 5000 and isinstance(opt.train.val_freq, int)
    assert opt.logger.save_checkpoint_freq == 10000 and opt.train.lr_steps == [200000, 400000, 600000]
    assert opt.train.extra == {"is_weighted": False, "loss_type": "l1", "weight": 1.0}
    train, val = opt.datasets["train"], opt.datasets["val"]
    assert (train.mode, train.phase, train.batch_size, train.patch_size) == ("MD", "train", 16, 256)
    assert train.use_flip and train.use_rot and val.phase == "val"
    assert train.distortion == opt.distortion
    exp = tmp_path / "experiments" / "universal-ir"
    assert opt.path.experiments_root == str(exp)
    assert (opt.path.models, opt.path.training_state, opt.path.val_images) == (
        str(exp / "models"), str(exp / "training_state"), str(exp / "val_images"))
    assert opt.path.extra == {"pretrain_model_G": None, "strict_load": True}


def test_unused_keys_are_reported_in_one_info_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="daclip_lora.training.options"):
        opt = load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False)
    lines = [r.getMessage() for r in caplog.records if "not used by daclip_lora" in r.getMessage()]
    assert len(lines) == 1
    for key in ("model", "sde", "network_G", "train.is_weighted", "path.strict_load"):
        assert key in lines[0]
    assert "train.is_weighted" in opt.ignored


def test_loader_is_pure(tmp_path):
    env = dict(os.environ)
    load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False)
    assert dict(os.environ) == env
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key,phase", [("train", "train"), ("val", "val"), ("val_2", "val"),
                                       ("test1", "test"), ("test_2", "test")])
def test_dataset_phase_from_key(key, phase, tmp_path):
    yml = tmp_path / "o.yml"
    yml.write_text(f"name: x\ndatasets:\n  {key}:\n    mode: LQGT\n    dataroot_LQ: a\n    dataroot_GT: b\n")
    assert load_options(yml, is_train=False, check_paths=False).datasets[key].phase == phase


def _load(tmp_path, text, is_train=False, **kw):
    yml = tmp_path / "bad.yml"
    yml.write_text(text)
    return load_options(yml, is_train=is_train, root=tmp_path, **kw)


@pytest.mark.parametrize("text,pattern", [
    ("name: x\nsd:\n  lora:\n    rnak: 4\n", r"sd.lora.rnak: unknown key. Did you mean: rank"),
    ("name: x\nruntime:\n  mixed_precison: bf16\n", r"runtime.mixed_precison: unknown key. Did you mean: mixed_precision"),
    ("name: x\nruntime:\n  mixed_precision: bf61\n", r"runtime.mixed_precision: expected one of no, fp16, bf16, got 'bf61'"),
    ("name: x\nsd:\n  lora:\n    rank: eight\n", r"sd.lora.rank: expected an integer, got the text 'eight'"),
    ("name: x\nruntime:\n  cache: maybe\n", r"runtime.cache: expected true or false, got 'maybe'"),
    ("name: x\nruntime:\n  cache_crops: 0\n", r"runtime.cache_crops must be at least 1 .*got 0"),
    ("name: x\ndistortion: noisy\n", r"distortion: expected a list of text, got 'noisy'"),
    ("suffix: a\n", r"name: required key is missing"),
    ("name: x\ndatasets:\n  test:\n    mode: LQGT\n    dataroot_GT: g\n", r"datasets.test.dataroot_LQ: required for mode LQGT"),
    ("name: x\ndatasets:\n  trian:\n    mode: MD\n    dataroot: d\n", r"datasets.trian: a dataset key must start with train, val, test or calib"),
    ("name: x\ndatasets:\n  test:\n    mode: LQG\n", r"datasets.test.mode: expected one of LQGT, MD, GT, CSV, captions, got 'LQG'. Did you mean: LQGT"),
    ("name: x\ntask: controler\n", r"task: expected one of restoration, controller, text2image.*Did you mean: controller"),
    ("name: x\ndatasets:\n  val:\n    mode: MD\n    dataroot: d\n", r"datasets.val: mode MD needs degradation names"),
])
def test_bad_options_messages(text, pattern, tmp_path):
    with pytest.raises(OptionsError, match=pattern) as info:
        _load(tmp_path, text, check_paths=False)
    assert "bad.yml" in str(info.value)


def test_training_needs_a_train_dataset(tmp_path):
    with pytest.raises(OptionsError, match="training needs a dataset whose key starts with 'train'"):
        _load(tmp_path, "name: x\n", is_train=True)


def test_number_written_as_string_is_accepted_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="daclip_lora.training.options"):
        opt = _load(tmp_path, "name: x\ntrain:\n  lr_G: 2e-4\n", is_train=False)
    assert opt.train.lr_G == pytest.approx(2e-4) and isinstance(opt.train.lr_G, float)
    assert any("train.lr_G: '2e-4' is text in YAML" in r.getMessage() for r in caplog.records)


def test_yaml_syntax_error_has_line_number(tmp_path):
    with pytest.raises(OptionsError, match=r"bad.yml:4:8: YAML syntax error: expected .,. or .\]."):
        _load(tmp_path, "name: x\ntrain:\n  lr_G: [1, 2\n  niter: 3\n")


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(OptionsError, match=r"datasets.test.dataroot_LQ: path .*nowhere does not exist"):
        _load(tmp_path, f"name: x\ndatasets:\n  test:\n    mode: LQGT\n    dataroot_LQ: {tmp_path}/nowhere\n"
                        f"    dataroot_GT: {tmp_path}\n")


def test_missing_options_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="options file .*none.yml does not exist"):
        load_options(tmp_path / "none.yml", is_train=False)


@pytest.mark.parametrize("written", ["no", "'no'", "false"])
def test_yaml_bare_no_is_the_option_no(tmp_path, written):
    """YAML 1.1 reads `mixed_precision: no`, as the docs write it, as false: it means "no"."""
    opt = _load(tmp_path, f"name: x\nruntime:\n  mixed_precision: {written}\n", check_paths=False)
    assert opt.runtime.mixed_precision == "no"


def test_tilde_is_expanded(tmp_path):
    opt = _load(tmp_path, "name: x\npath:\n  daclip: ~/weights/daclip.pt\n", check_paths=False)
    assert opt.path.daclip == str(Path.home() / "weights" / "daclip.pt")


@pytest.mark.parametrize("override,getter,value", [
    ("train.lr_G=2e-4", lambda o: o.train.lr_G, 2e-4),
    ("sd.lora.rank=16", lambda o: o.sd.lora.rank, 16),
    ("runtime.cache=true", lambda o: o.runtime.cache, True),
    ("sd.prompt=123", lambda o: o.sd.prompt, "123"),
    ("datasets.train.batch_size=4", lambda o: o.datasets["train"].batch_size, 4),
    ("sde.T=50", lambda o: o.extra["sde"]["T"], 50),
    ("runtime.max_grad_norm=null", lambda o: o.runtime.max_grad_norm, None),
])
def test_cli_overrides_are_typed_by_schema(override, getter, value, tmp_path):
    opt = load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False,
                       overrides=[override])
    assert getter(opt) == value and type(getter(opt)) is type(value)


@pytest.mark.parametrize("override,pattern", [
    ("sd.lora.rnak=4", r"--opt sd.lora.rnak: unknown key 'rnak'. Did you mean: rank"),
    ("train.lr_G", r"expected key.sub=value"),
    ("sd.lora.rank=big", r"sd.lora.rank: expected an integer, got the text 'big'"),
])
def test_bad_overrides(override, pattern, tmp_path):
    with pytest.raises(OptionsError, match=pattern):
        load_options(DATA / "uir_train.yml", is_train=True, root=tmp_path, check_paths=False, overrides=[override])


def test_options_to_dict_round_trips_names(tmp_path):
    opt = load_options(DATA / "uir_test.yml", is_train=False, root=tmp_path, check_paths=False)
    d = options_to_dict(opt)
    assert d["datasets"]["test1"]["mode"] == "LQGT" and d["sd"]["lora"]["rank"] == 8


def test_options_readme_documents_every_key_of_our_blocks():
    import dataclasses

    from daclip_lora.training import options as o

    doc = (Path(__file__).parents[1] / "docs" / "options.md").read_text()
    blocks = [o.DaclipOptions, o.ControllerOptions, o.RestorationSDOptions, o.Text2ImageSDOptions, o.LossOptions,
              o.ConditioningOptions, o.LoraOptions, o.RestorationRuntimeOptions,
              o.RuntimeOptions, o.SamplingOptions, o.TrainOptions, o.LoggerOptions, o.DatasetOptions]
    undocumented = [f"{cls.__name__}.{f.name}" for cls in blocks for f in dataclasses.fields(cls)
                    if f.name not in ("extra", "phase", "name", "color") and f"`{f.name}`" not in doc]
    assert undocumented == []


@pytest.mark.parametrize("name,is_train,task", [
    ("controller.yml", True, "controller"), ("controller_test.yml", False, "controller"),
    ("restoration.yml", True, "restoration"), ("restoration_test.yml", False, "restoration"),
    ("text2image.yml", True, "text2image"),
])
def test_shipped_option_files_load(name, is_train, task, tmp_path):
    opt = load_options(Path(__file__).parents[1] / "options" / name, is_train=is_train, root=tmp_path,
                       check_paths=False)
    assert opt.task == task and opt.ignored == []
