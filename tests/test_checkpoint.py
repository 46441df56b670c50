"""Checkpoint formats, strict round trips, plain-CLIP initialisation, and every refusal message."""

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

import daclip_lora
from daclip_lora import CheckpointError
from daclip_lora.clip.checkpoint import read_safetensors_metadata, strip_aliases
from daclip_lora.apps.cli import main
from conftest import TINY, randomize_zero_modules


@pytest.fixture
def trained(tiny):
    """A tiny DA-CLIP whose controller differs from CLIP (as after DA-CLIP training)."""
    randomize_zero_modules(tiny)
    with torch.no_grad():
        for p in tiny.visual_control.parameters():
            p.add_(0.01)
    return tiny


def _write(kind, model, path):
    sd = model.state_dict()
    if kind == "bare.pt":
        torch.save(sd, path)
    elif kind == "training-dict-module.pt":  # the released DA-CLIP format (DDP training)
        torch.save({"epoch": 30, "name": "daclip_ViT-B-32-run", "optimizer": {"state": {}, "param_groups": []},
                    "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif kind == "no-alias.safetensors":
        save_file({k: v.contiguous() for k, v in strip_aliases(sd).items()}, str(path))
    elif kind == "no-alias.pth":
        torch.save(strip_aliases(sd), path)
    return path


@pytest.mark.parametrize("kind", ["bare.pt", "training-dict-module.pt", "no-alias.safetensors", "no-alias.pth"])
@torch.no_grad()
def test_round_trip_is_exact(kind, trained, images, tmp_path):
    path = _write(kind, trained, tmp_path / f"ckpt.{kind}")
    loaded = daclip_lora.create_model(TINY, pretrained=str(path))
    for a, b in zip(trained.encode_image(images, control=True), loaded.encode_image(images, control=True)):
        assert (a - b).abs().max().item() == 0.0
    ref, got = trained.state_dict(), loaded.state_dict()
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) == 0.0


@torch.no_grad()
def test_plain_clip_checkpoint_initialises_controller_and_locks_clip(tiny, images, tmp_path):
    torch.manual_seed(5)
    clip = daclip_lora.create_model(TINY).clip  # other random weights than `tiny`
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": clip.state_dict()}, path)
    model = daclip_lora.create_model(TINY, pretrained=str(path))
    assert (model.clip.encode_image(images) - clip.encode_image(images)).abs().max().item() == 0.0
    # controller == CLIP vision tower, zero modules zero: the degradation features equal CLIP's.
    _, degra = model.encode_image(images, control=True)
    assert (degra - clip.encode_image(images)).abs().max().item() == 0.0
    assert model.logit_scale.item() == clip.logit_scale.item()
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_load_result_reports_kind(trained, tmp_path):
    path = _write("bare.pt", trained, tmp_path / "a.pt")
    model = daclip_lora.create_model(TINY)
    result = daclip_lora.load_checkpoint(model, path)
    assert (result.kind, result.missing_keys, result.unexpected_keys) == ("daclip", [], [])


# --------------------------------------------------------------------------- refusals
def _other_size_config(tmp_path):
    cfg = json.loads((daclip_lora.clip.registry._builtin_config_dir() / "daclip_tiny.json").read_text())
    cfg["vision_cfg"]["layers"] = 5
    path = tmp_path / "daclip_tiny5.json"
    path.write_text(json.dumps(cfg))
    daclip_lora.add_model_config(path)
    return "daclip_tiny5"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file .*nope.pt does not exist"):
        daclip_lora.load_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize("pretrained, message", [
    ("openai", "'openai' for 'daclip_tiny' is neither a file nor an open_clip tag of tiny"),
    ("weights/daclip.pt", "pretrained checkpoint 'weights/daclip.pt' for 'daclip_tiny' does not exist"),
    ("daclip.safetensors", "'daclip.safetensors' for 'daclip_tiny' does not exist")])
def test_missing_pretrained_in_create_model(pretrained, message):
    with pytest.raises(FileNotFoundError, match=message):
        daclip_lora.create_model(TINY, pretrained=pretrained)


def test_truncated_file(trained, tmp_path):
    path = _write("bare.pt", trained, tmp_path / "full.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        daclip_lora.load_state_dict(tmp_path / "cut.pt")


def test_truncated_safetensors(trained, tmp_path):
    path = _write("no-alias.safetensors", trained, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid .safetensors file"):
        daclip_lora.load_state_dict(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        daclip_lora.load_state_dict(tmp_path / "empty.pt")


def test_non_checkpoint_file(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        daclip_lora.load_state_dict(tmp_path / "notes.pt")


def test_arbitrary_pickle_is_refused_with_conversion_hint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling.*refused.*weights_only=False.*safetensors"):
        daclip_lora.load_state_dict(tmp_path / "p.pt")


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        daclip_lora.load_state_dict(tmp_path / "list.pt")


def test_unrelated_state_dict(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a DA-CLIP nor a CLIP state dict.*encoder.weight"):
        daclip_lora.create_model(TINY, pretrained=str(tmp_path / "other.pt"))


def test_wrong_number_of_blocks(trained, tmp_path):
    path = _write("bare.pt", trained, tmp_path / "tiny.pt")
    name = _other_size_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys .*Likely cause: wrong model size"):
        daclip_lora.create_model(name, pretrained=str(path))


def test_wrong_widths(tmp_path):
    sd = daclip_lora.create_model("daclip_ViT-B-32", device="meta").state_dict()
    # stride-0 views: torch.save keeps one element per tensor, so the ViT-B/32-shaped file is a few kB, not 1.3 GB
    torch.save({k: torch.zeros(()).expand(v.shape) for k, v in sd.items()}, tmp_path / "b32.pt")
    assert (tmp_path / "b32.pt").stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match=r"other shapes, e.g. .* Likely cause: wrong model size"):
        daclip_lora.create_model(TINY, pretrained=str(tmp_path / "b32.pt"))


def test_clip_checkpoint_missing_text_tower(tiny, tmp_path):
    sd = {k: v for k, v in tiny.clip.state_dict().items() if not k.startswith("transformer.")}
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match=r"\d+ missing keys \(transformer.resblocks"):
        daclip_lora.create_model(TINY, pretrained=str(tmp_path / "clip.pt"))


def test_daclip_checkpoint_into_plain_clip(trained, tmp_path):
    path = _write("bare.pt", trained, tmp_path / "d.pt")
    clip = trained.clip
    with pytest.raises(CheckpointError, match="is a DA-CLIP checkpoint but the model is a CLIP"):
        daclip_lora.load_checkpoint(clip, path)


# ----------------------------------------------------------------------------- convert
@torch.no_grad()
def test_convert_cli_writes_exact_safetensors(trained, images, tmp_path, capsys):
    src = _write("training-dict-module.pt", trained, tmp_path / "daclip.pt")
    dst = tmp_path / "out" / "daclip.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    meta = read_safetensors_metadata(dst)
    assert meta["model_name"] == TINY and meta["kind"] == "daclip"
    keys = daclip_lora.load_state_dict(dst).keys()
    assert not any(k.startswith("visual.") for k in keys)
    assert len(keys) == len(trained.state_dict()) - len(trained.visual.state_dict())
    loaded = daclip_lora.create_model(TINY, pretrained=str(dst))
    for a, b in zip(trained.encode_image(images, control=True), loaded.encode_image(images, control=True)):
        assert (a - b).abs().max().item() == 0.0


def test_convert_cli_user_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daclip-lora convert: error:") and "does not exist" in err
    assert "\n" not in err and "Traceback" not in err


def test_convert_rejects_wrong_suffix(trained, tmp_path):
    src = _write("bare.pt", trained, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"must end in .safetensors \(e.g. b.safetensors\)"):
        daclip_lora.convert_checkpoint(src, tmp_path / "b.pt")
