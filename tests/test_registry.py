"""Config registry, validation messages, name dispatch and weightless (meta) layouts."""

import json

import open_clip
import pytest
import torch

import daclip_lora
from daclip_lora import ConfigError, UnknownModelError
from conftest import TINY

ORIGINAL_B32 = {  # daclip_ViT-B-32.json exactly as the DA-CLIP repository ships it
    "embed_dim": 512, "custom_text": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def test_builtin_configs_are_registered():
    assert daclip_lora.clip.registry.list_models() == ["daclip_tiny", "daclip_ViT-B-32", "daclip_ViT-L-14"]
    assert daclip_lora.get_model_config("daclip_ViT-B-32")["vision_cfg"] == ORIGINAL_B32["vision_cfg"]


def test_list_models_includes_open_clip_names():
    names = daclip_lora.list_models()
    assert names[:3] == ["daclip_tiny", "daclip_ViT-B-32", "daclip_ViT-L-14"]
    assert "ViT-B-32" in names and len(names) == 3 + len(open_clip.list_models())


@pytest.mark.parametrize("name,n_keys,controller_params", [
    ("daclip_ViT-B-32", 631, 94_936_320),
    ("daclip_ViT-L-14", 1087, 329_156_608),
])
def test_released_architectures_on_meta_device(name, n_keys, controller_params):
    model = daclip_lora.create_model(name, device="meta")
    sd = model.state_dict()
    assert len(sd) == n_keys
    aliases = [k for k in sd if k.startswith("visual.")]
    assert aliases and all(sd[k].shape == sd["clip." + k].shape for k in aliases)
    assert sum(p.numel() for p in model.visual_control.parameters()) == controller_params
    assert not any(k.startswith("clip.text.") for k in sd)  # plain CLIP key names, not CustomTextCLIP


def test_user_config_in_original_format(tmp_path):
    path = tmp_path / "daclip_mine.json"
    cfg = json.loads(json.dumps(ORIGINAL_B32))
    cfg["vision_cfg"].update(layers=2, width=64)
    cfg["text_cfg"].update(layers=1, width=64, heads=2)
    path.write_text(json.dumps(cfg))
    assert daclip_lora.add_model_config(path) == ["daclip_mine"]
    model = daclip_lora.create_model("daclip_mine")
    assert type(model.clip) is open_clip.CLIP
    assert len(model.visual_control.transformer.zero_modules) == 2


def test_add_model_config_folder(tmp_path):
    for name in ("daclip_a", "daclip_b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(ORIGINAL_B32))
    assert daclip_lora.add_model_config(tmp_path) == ["daclip_a", "daclip_b"]


def test_clip_family_builds_plain_clip(tmp_path):
    cfg = {**daclip_lora.get_model_config(TINY), "family": "clip"}
    (tmp_path / "tinyclip.json").write_text(json.dumps(cfg))
    daclip_lora.add_model_config(tmp_path / "tinyclip.json")
    model = daclip_lora.create_model("tinyclip")
    assert type(model) is open_clip.CLIP
    assert "tinyclip" in daclip_lora.clip.registry.list_models(family="clip")


def _drop(section, key):
    def edit(cfg):
        (cfg if section is None else cfg[section]).pop(key)
    return edit


def _set(section, key, value):
    def edit(cfg):
        (cfg if section is None else cfg[section])[key] = value
    return edit


@pytest.mark.parametrize("edit,pattern", [
    (_drop(None, "embed_dim"), r"missing required key 'embed_dim' in top level"),
    (_drop(None, "text_cfg"), r"missing required key 'text_cfg' in top level"),
    (_set(None, "text_cfg", 7), r"'text_cfg' must be an object, got int"),
    (_drop("vision_cfg", "layers"), r"missing required key 'layers' in vision_cfg"),
    (_drop("text_cfg", "vocab_size"), r"missing required key 'vocab_size' in text_cfg"),
    (_set("vision_cfg", "patch_sise", 32), r"unknown key 'patch_sise' in vision_cfg. Did you mean: patch_size"),
    (_set(None, "quick_gelo", True), r"unknown top-level key 'quick_gelo'. Did you mean: quick_gelu"),
    (_set("vision_cfg", "layers", [3, 4, 6, 3]), r"DA-CLIP needs a ViT vision tower"),
    (_set(None, "family", "daclp"), r"unknown family 'daclp'.*Did you mean: daclip"),
])
def test_bad_config_messages_name_file_and_key(edit, pattern, tmp_path):
    cfg = json.loads(json.dumps(ORIGINAL_B32))
    edit(cfg)
    path = tmp_path / "daclip_bad.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=pattern) as info:
        daclip_lora.add_model_config(path)
    assert str(path) in str(info.value)
    assert "daclip_bad" not in daclip_lora.clip.registry.list_models()


def test_invalid_json_reports_line(tmp_path):
    path = tmp_path / "daclip_broken.json"
    path.write_text('{\n  "embed_dim": 512,\n  "vision_cfg": {,\n}')
    with pytest.raises(ConfigError, match=r"daclip_broken.json: invalid JSON at line 3"):
        daclip_lora.add_model_config(path)


def test_bad_file_in_folder_registers_nothing(tmp_path):
    (tmp_path / "daclip_good.json").write_text(json.dumps(ORIGINAL_B32))
    (tmp_path / "daclip_zbad.json").write_text("[]")
    with pytest.raises(ConfigError, match="daclip_zbad.json: a model config must be a JSON object"):
        daclip_lora.add_model_config(tmp_path)
    assert "daclip_good" not in daclip_lora.clip.registry.list_models()


def test_missing_config_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        daclip_lora.add_model_config(tmp_path / "nope.json")


@pytest.mark.parametrize("name,suggestion", [("daclip_ViT-B-23", "daclip_ViT-B-32"), ("ViT-B-23", "ViT-B-32")])
def test_unknown_model_lists_close_matches(name, suggestion):
    with pytest.raises(UnknownModelError, match=f"unknown model '{name}'.*Did you mean: .*{suggestion}"):
        daclip_lora.create_model(name)


def test_open_clip_names_pass_through_unchanged():
    torch.manual_seed(0)
    ours = daclip_lora.create_model("RN50", device="meta")
    theirs = open_clip.create_model("RN50", device="meta")
    assert type(ours) is type(theirs) is open_clip.CLIP
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_tokenizer_matches_open_clip():
    ours = daclip_lora.get_tokenizer("daclip_ViT-B-32")
    theirs = open_clip.get_tokenizer("ViT-B-32")
    texts = ["a photo of a cat", "noisy"]
    assert torch.equal(ours(texts), theirs(texts))
    assert torch.equal(daclip_lora.tokenize(texts), theirs(texts))
    assert ours(texts).shape == (2, 77)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"precision": "fp8"}, "unknown precision 'fp8'; expected one of fp32"),
    ({"jit": True}, "jit=True is not supported"),
    ({"require_pretrained": True}, "requires pretrained=<checkpoint file>"),
])
def test_bad_create_model_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        daclip_lora.create_model(TINY, **kwargs)


# ------------------------------------------------------------------------------------ the one Registry class
def test_registry_entries_are_objects_decorators_or_lazy_paths():
    from daclip_lora._utils.registry import Registry

    reg = Registry("widget")
    reg.register("direct", len)

    @reg.register("decorated")
    def decorated():
        return 1

    reg.register("lazy", "os.path:join")
    assert reg.names() == ["direct", "decorated", "lazy"]
    assert reg.get("direct") is len and reg.get("decorated") is decorated
    import os.path

    assert reg.get("lazy") is os.path.join and "lazy" in reg and len(reg) == 3


@pytest.mark.parametrize("name,message", [
    ("decorate", r"unknown widget 'decorate'; registered: direct, decorated\. Did you mean: decorated, direct\?"),
    ("zzz", r"unknown widget 'zzz'; registered: direct, decorated\.$"),
])
def test_registry_unknown_names_list_the_registered_ones(name, message):
    from daclip_lora._utils.registry import Registry

    reg = Registry("widget")
    reg.register("direct", len)
    reg.register("decorated", max)
    with pytest.raises(ValueError, match=message):
        reg.get(name)


def test_builtin_families_are_lazy_until_used():
    import subprocess
    import sys

    code = ("import sys, daclip_lora.clip.registry as r\n"
            "assert r.list_families() == ['clip', 'daclip'] and 'daclip_lora.clip.factory' not in sys.modules\n"
            "assert r.get_family_factory('daclip').__name__ == 'build_daclip'\n"
            "assert 'daclip_lora.clip.factory' in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
