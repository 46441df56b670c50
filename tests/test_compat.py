"""Supported dependency versions: the installed set, the range table, setup.py, and LoRA without the mixin gates."""

import ast
import re
from pathlib import Path

import pytest
import torch

from daclip_lora._utils import compat as _compat
from daclip_lora._utils.compat import SUPPORTED, dependency_problems, installed_versions

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"torch": "2.14.1+cu128", "open_clip_torch": "3.3.0", "timm": "1.0.31", "peft": "0.21.2",
        "diffusers": "0.42.1", "transformers": "5.24.0", "accelerate": "1.15.0", "safetensors": "0.8.0"}


def test_installed_combination_is_supported():
    problems = dependency_problems()
    assert problems == [], "this environment is not supported by daclip_lora:\n" + "\n".join(problems)


def test_good_combination_has_no_problem():
    assert dependency_problems(GOOD, diffusers_min_peft="0.17.0") == []


@pytest.mark.parametrize("name, version, expected", [
    ("peft", "0.15.2", "peft 0.15.2 is not supported: daclip_lora needs peft>=0.17"),
    ("open_clip_torch", "4.0.0", "open_clip_torch 4.0.0 is not supported: daclip_lora needs open_clip_torch>=3.0,<4"),
    ("open_clip_torch", "2.32.0", "open_clip_torch 2.32.0 is not supported"),
    ("diffusers", "0.29.2", "diffusers 0.29.2 is not supported: daclip_lora needs diffusers>=0.30"),
    ("transformers", "4.39.0", "transformers 4.39.0 is not supported"),
    ("torch", "not-a-version", "torch not-a-version is not supported"),
    ("safetensors", None, "safetensors is not installed; daclip_lora needs safetensors>=0.4"),
])
def test_unsupported_version_is_named_with_the_range_and_the_fix(name, version, expected):
    problems = dependency_problems({**GOOD, name: version}, diffusers_min_peft="0.17.0")
    assert len(problems) == 1
    assert problems[0].startswith(expected)
    assert "pip install" in problems[0]


@pytest.mark.parametrize("version, ok", [("3.0", True), ("3.99.1", True), ("4.0", False), ("4.0.0.dev0", False),
                                         ("3.0.0rc1", True), ("2.99", False)])
def test_range_compares_releases(version, ok):
    assert SUPPORTED["open_clip_torch"].admits(version) is ok


def test_peft_older_than_what_diffusers_asks_for_is_named():
    problems = dependency_problems({**GOOD, "peft": "0.18.0"}, diffusers_min_peft="0.19.0")
    assert problems == ["peft 0.18.0 is older than the installed diffusers 0.42.1 needs (>= 0.19.0); "
                        "pip install 'peft>=0.19.0'"]


def _install_requires():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    value = next(k.value for k in call.keywords if k.arg == "install_requires")
    return [ast.literal_eval(e) for e in value.elts]


def test_setup_py_ranges_are_the_supported_table():
    declared = {}
    for line in _install_requires():
        m = re.match(r"([A-Za-z0-9_.-]+)(.*)", line)
        declared[m.group(1)] = m.group(2)
    for name, req in SUPPORTED.items():
        assert declared.get(name) == req.specifier(), f"setup.py says {name}{declared.get(name)}, _compat says " \
                                                      f"{name}{req.specifier()}"


def test_constraints_pin_every_supported_distribution_at_a_supported_version():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for name, req in SUPPORTED.items():
        version = pins.get(name.lower().replace("_", "-"))
        assert version is not None, f"constraints.txt does not pin {name}"
        assert req.admits(version), f"constraints.txt pins {name}=={version}, outside {req.specifier()}"


def test_constraints_are_what_is_installed():
    """The constraints name the versions this test run uses (CI installs with them)."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    installed = installed_versions(list(SUPPORTED))
    for name in SUPPORTED:
        assert installed[name] == pins[name], f"{name}: installed {installed[name]}, constraints.txt {pins[name]}"


def test_cli_refuses_an_unsupported_combination_in_one_line(monkeypatch, capsys, tmp_path):
    from daclip_lora.apps.cli import main

    monkeypatch.setattr(_compat, "installed_versions", lambda names=None: {**GOOD, "peft": "0.16.0"})
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daclip-lora demo: error: peft 0.16.0 is not supported: daclip_lora needs peft>=0.17")
    assert "\n" not in err
    assert not (tmp_path / "demo").exists()


def test_cli_env_lists_versions(capsys):
    from daclip_lora.apps.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name, version in installed_versions().items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(version)}\s", out, re.M), out


def _refuse(*args, **kwargs):
    raise ValueError("The version of PEFT you are using is not compatible, please use a version >= 99.0.0")


def test_text_encoder_lora_does_not_go_through_the_transformers_peft_gate(monkeypatch):
    """transformers' PEFT mixin refuses peft versions (5.24 refuses 0.21.2): the LoRA must not depend on it."""
    import transformers.integrations.peft as hf_peft
    from transformers import CLIPTextConfig, CLIPTextModel

    from daclip_lora.restoration.lora import add_text_encoder_lora

    monkeypatch.setattr(hf_peft, "check_peft_version", _refuse)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=8))
    ids = torch.randint(0, 64, (1, 8))
    before = te(ids).last_hidden_state
    add_text_encoder_lora(te, {"rank": 2})
    lora = [n for n, p in te.named_parameters() if p.requires_grad]
    assert len(lora) == 2 * 4  # A and B on q, k, v and out_proj of the one layer
    assert all("lora_" in n for n in lora)
    assert (te(ids).last_hidden_state - before).abs().max().item() == 0.0  # B starts at zero


def test_unet_lora_does_not_go_through_the_diffusers_peft_gate(monkeypatch):
    import diffusers.loaders.peft as df_peft
    from diffusers import UNet2DConditionModel

    from daclip_lora.restoration.lora import add_unet_lora

    monkeypatch.setattr(df_peft, "check_peft_version", _refuse)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    add_unet_lora(unet, {"rank": 2})
    assert sum(p.numel() for p in unet.parameters() if p.requires_grad) > 0
    assert all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    assert set(unet.peft_config) == {"default"}
