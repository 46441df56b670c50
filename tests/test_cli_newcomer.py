"""The command line as a newcomer meets it (issue 24): fast start, default weights, weights found from a parent or a
demo folder, inapplicable sampling flags, outputs that keep the input's JPEG quality and alpha, the
``degradation`` command, progress inside an image and the labelled overview."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from daclip_lora.apps.cli import main
from daclip_lora.data.images import read_properties, write_image
from daclip_lora.restoration.locate import find_restoration_folder
from daclip_lora.tiny.locate import EMBEDDED_RESTORER, embedded_restorer

# --------------------------------------------------------------------------------- fast start
PROBE = """
import sys, time
start = time.perf_counter()
from daclip_lora.apps.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("RESULT", code, "torch" in sys.modules, round(time.perf_counter() - start, 3))
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["restore", "--help"], 0),
    (["bogus-command"], 2),
    (["restore", "--input", "/no/such/folder", "--output", "out"], 2),
    (["restore", "--input", ".", "--output", "out", "--weights", "/no/such/weights"], 2),
    (["restore", "--input", ".", "--output", "out", "--jpeg-quality", "101"], 2),
    (["degradation", "/no/such/image.png"], 2),
])
def test_help_and_argument_errors_answer_before_torch_is_imported(argv, code, tmp_path):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    wall = time.perf_counter() - start
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")][-1].split()
    assert int(result[1]) == code, out.stderr
    assert result[2] == "False", f"{argv} imported torch"  # the heavy imports are what made it slow
    assert float(result[3]) < 1.5, f"{argv} took {result[3]} s in main (wall {wall:.1f} s)"


def test_package_attributes_still_resolve_lazily():
    import daclip_lora

    assert callable(daclip_lora.create_model_from_pretrained) and "create_model" in dir(daclip_lora)
    assert daclip_lora.tokenize is __import__("open_clip").tokenize  # an open_clip name, resolved on use
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        daclip_lora.no_such_name


# ----------------------------------------------------------------------------- weights lookup
def _restoration(folder):
    folder.mkdir(parents=True)
    (folder / "restoration.json").write_text("{}")
    return folder


@pytest.mark.parametrize("layout, expected", [
    ("itself", "a/restoration"),
    ("parent", "a/restoration"),
    ("demo", "a/restoration"),
    ("moved_demo", "runs/experiments/x/models/restoration"),
])
def test_weights_are_found_from_the_folder_its_parent_or_a_demo_folder(tmp_path, layout, expected):
    root = tmp_path / "w"
    target = _restoration(root / expected)
    (root / "controller_lora").mkdir(exist_ok=True)  # a sibling that is not a restoration folder
    if layout in ("demo", "moved_demo"):
        named = target if layout == "demo" else tmp_path / "elsewhere" / "restoration"
        (root / "summary.json").write_text(json.dumps({"sd_lora": str(named)}))
    given = {"itself": target, "parent": root / "a"}.get(layout, root)
    assert find_restoration_folder(given) == target


@pytest.mark.parametrize("setup, message", [
    ("missing", r"no restoration weights at .*nope: .*\(the path does not exist\)$"),
    ("empty", r"no restoration weights at .*, the folder above it, or a `daclip-lora demo` output folder$"),
    ("two", r"holds 2 restoration folders .*pass the one to use"),
])
def test_weights_lookup_errors_say_what_to_pass(tmp_path, setup, message):
    path = tmp_path / ("nope" if setup == "missing" else "w")
    if setup != "missing":
        path.mkdir()
    if setup == "two":
        _restoration(path / "r1"), _restoration(path / "r2")
    with pytest.raises(FileNotFoundError, match=message):
        find_restoration_folder(path)


def test_the_shipped_restorer_parent_is_accepted():
    assert find_restoration_folder(EMBEDDED_RESTORER) == embedded_restorer()


# ------------------------------------------------------------------------------ restore runs
def _photo(h, w, seed=0):
    from daclip_lora.apps.web import degraded_example

    return degraded_example("chelsea", "noisy", seed=seed, size=max(h, w))[:h, :w]


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """One ``restore`` run with the defaults (no --weights: the shipped restorer) over a JPEG (q 92), an RGBA
    PNG and a 1x1 image, with one-step-inapplicable flags given."""
    root = tmp_path_factory.mktemp("restore")
    inp, out = root / "in", root / "out"
    inp.mkdir()
    Image.fromarray((_photo(48, 56) * 255).astype(np.uint8)).save(inp / "photo.jpg", quality=92)
    rgba = np.concatenate([(_photo(40, 40, 1) * 255).astype(np.uint8),
                           np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))[:, :, None]], axis=2)
    Image.fromarray(rgba, "RGBA").save(inp / "alpha.png")
    write_image(inp / "dot.png", np.full((1, 1, 3), 0.5, np.float32))
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("daclip_lora").addHandler(handler)
    try:
        code = main(["restore", "--input", str(inp), "--output", str(out), "--steps", "50", "--seed", "3"])
    finally:
        logging.getLogger("daclip_lora").removeHandler(handler)
    return {"code": code, "in": inp, "out": out, "log": [r.getMessage() for r in records]}


def test_restore_without_weights_uses_the_shipped_restorer_and_handles_every_image(restored):
    assert restored["code"] == 0
    assert sorted(p.name for p in restored["out"].iterdir()) == ["alpha.png", "degradations.json", "dot.png",
                                                                 "photo.jpg"]
    assert Image.open(restored["out"] / "dot.png").size == (1, 1)


@pytest.mark.parametrize("flag", ["--steps 50", "--seed 3"])
def test_flags_a_one_step_model_ignores_are_a_warning_line(restored, flag):
    assert sum(m.startswith(f"{flag} does not apply to this one-step model") for m in restored["log"]) == 1


def test_restored_jpeg_keeps_the_input_quantisation_tables(restored):
    src, out = read_properties(restored["in"] / "photo.jpg"), read_properties(restored["out"] / "photo.jpg")
    assert out.jpeg_qtables == src.jpeg_qtables and out.jpeg_subsampling == src.jpeg_subsampling
    assert Image.open(restored["out"] / "photo.jpg").quantization != _quantization(75)  # not Pillow's default


def _quantization(quality):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=quality)
    return Image.open(buf).quantization


def test_restored_png_keeps_the_alpha_channel_unchanged(restored):
    src = np.asarray(Image.open(restored["in"] / "alpha.png"))
    out = np.asarray(Image.open(restored["out"] / "alpha.png"))
    assert out.shape == (40, 40, 4) and np.array_equal(out[:, :, 3], src[:, :, 3])


@pytest.mark.parametrize("quality", [60, 100])
def test_jpeg_quality_flag_sets_the_quality(tmp_path, quality):
    path = write_image(tmp_path / "x.jpg", _photo(32, 32), keep=None, quality=quality)
    assert Image.open(path).quantization == _quantization(quality)


def test_unknown_scheduler_is_an_error_even_for_a_one_step_model(tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png", _photo(16, 16))
    assert main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                 "--scheduler", "bogus"]) == 2
    assert "unknown scheduler 'bogus'" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- progress in an image
def test_tiles_of_one_image_advance_a_progress_bar(monkeypatch):
    from daclip_lora.restoration.progress import TileProgress
    from daclip_lora.restoration.pipeline import RestorationPipeline

    seen = []
    monkeypatch.setattr(TileProgress, "close", lambda self: seen.append((self.bar.n,
                                                                                           self.bar.total)))
    pipe = RestorationPipeline.from_pretrained(EMBEDDED_RESTORER, device="cpu")
    pipe(torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)), tile_size=64, progress=True)
    (done, total), = seen
    # 6 tile positions in chunks of 4: 2 calls; encoder and decoders (restored + the head's LQ) twice (shared
    # GroupNorm statistics), the one UNet call once
    assert done == total == 2 * 2 + 2 + 2 * 2 * 2


# ------------------------------------------------------------------------- degradation command
def test_degradation_command_uses_the_models_own_logit_scale(tmp_path, capsys):
    from daclip_lora.apps.web import degraded_example
    from daclip_lora.clip.factory import load_daclip
    from daclip_lora.restoration.serialization import read_restoration_config

    for deg in ("noisy", "hazy"):
        write_image(tmp_path / "in" / f"{deg}.png", degraded_example("chelsea", deg, size=64))
    assert main(["degradation", str(tmp_path / "in"), "--json", str(tmp_path / "p.json")]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "p.json").read_text())
    config = read_restoration_config(embedded_restorer())
    model = load_daclip(config.daclip_model, config.daclip_pretrained, config.daclip_adapter)
    scale = float(model.logit_scale.detach().exp())  # the controller LoRA trains it too
    assert abs(record["logit_scale"] - scale) < 1e-4 and abs(scale - 100.0) > 1.0
    for probs in record["images"].values():
        assert len(probs) == 10 and abs(sum(probs.values()) - 1) < 1e-5
    assert f"logit scale ({scale:.2f})" in printed and "noisy.png" in printed


# ------------------------------------------------------------------------------ overview labels
def test_overview_is_labelled(tmp_path):
    from daclip_lora.apps.demo import write_overview

    rng = np.random.default_rng(0)
    for deg in ("noisy", "hazy"):
        gt = rng.random((16, 16, 3)).astype(np.float32)
        write_image(tmp_path / "val" / deg / "grids" / "0.png", np.concatenate([gt * 0.5, gt * 0.9, gt], axis=1))
    img = np.asarray(Image.open(write_overview(tmp_path, ["noisy", "hazy"], tmp_path / "o.png", zoom=4)))
    side = 64
    assert img.shape[1] > 3 * side and img.shape[0] > 2 * side  # a label column, a header and captions
    label_column, header = img[:, :side], img[:side // 5]
    assert (label_column < 128).any() and (header < 128).any()  # text drawn there
    with pytest.raises(FileNotFoundError, match=re.escape("no LQ | restored | GT grids")):
        write_overview(tmp_path, ["noisy"], tmp_path / "x.png", split="test")


# ------------------------------------------------------------------- DA-CLIP's reading per image
def test_restore_writes_dacips_reading_of_every_image(restored):
    record = json.loads((restored["out"] / "degradations.json").read_text())
    assert set(record["images"]) == {"alpha.png", "dot.png", "photo.jpg"} and record["override"] is None
    for entry in record["images"].values():
        probs = entry["probabilities"]
        assert len(probs) == 10 and abs(sum(probs.values()) - 1) < 1e-5 and entry["predicted"] == max(probs,
                                                                                                     key=probs.get)


def test_degradation_word_override_changes_the_restoration(tmp_path):
    from daclip_lora.data.images import read_image
    from daclip_lora.restoration.pipeline import RestorationPipeline

    write_image(tmp_path / "in" / "a.png", _photo(64, 64))
    pipe = RestorationPipeline.from_pretrained(EMBEDDED_RESTORER, device="cpu")
    pipe.restore_folder(tmp_path / "in", tmp_path / "own", progress=False)
    pipe.restore_folder(tmp_path / "in", tmp_path / "low", progress=False, degradation="low-light")
    own, low = read_image(tmp_path / "own" / "a.png"), read_image(tmp_path / "low" / "a.png")
    assert np.abs(own - low).mean() > 0.01  # the conditioning is used: told "low light", it brightens
    assert json.loads((tmp_path / "low" / "degradations.json").read_text())["override"] == "low-light"
    lq = torch.from_numpy(_photo(64, 64)).permute(2, 0, 1)[None]
    direct = pipe(lq)[0].permute(1, 2, 0).numpy()
    assert np.abs(direct - own).max() <= 1 / 255 + 1e-6  # the folder path conditions exactly as a direct call
