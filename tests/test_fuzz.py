"""Seeded fuzzing (issue 12): mutated options files, image files and checkpoint files must be accepted or
refused with the package's own error in **one line** (naming the key for options); never another exception.

``FUZZ_CASES`` (200) mutants per shipped options file run in CI (~10 s in all); ``bench/fuzz.py --cases N`` runs
more. The counts tried / accepted / refused go to the end of the pytest report (see conftest.py).
"""

import copy
import io
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from daclip_lora.clip.checkpoint import CheckpointError, load_checkpoint, load_state_dict
from daclip_lora.apps.cli import main as cli_main
from daclip_lora.data.images import ImageError, read_image
from daclip_lora.training.options import OptionsError, load_options

OPTIONS = sorted((Path(__file__).resolve().parents[1] / "options").glob("*.yml"))
FUZZ_CASES = int(os.environ.get("DACLIP_FUZZ_CASES", "200"))
FUZZ_COUNTS: dict = {}  # read by conftest.pytest_terminal_summary
OWN_ERRORS = (OptionsError, FileNotFoundError, IsADirectoryError)

BAD_VALUES = ["x", "", -1, 0, -1e30, 1e30, 10 ** 12, 0.5, True, None, [], [1, "a"], {}, {"k": 1}, "1e-4", ".nan"]


def _keys(data, prefix=""):
    """Every dotted key path of a nested mapping."""
    out = []
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        out.append(dotted)
        if isinstance(v, dict):
            out.extend(_keys(v, dotted + "."))
    return out


def _get_parent(data, dotted):
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node[p]
    return node, parts[-1]


def mutate(text: str, rng: random.Random):
    """One mutant: ``(kind, key or None, bytes)``."""
    data = yaml.safe_load(text)
    kind = rng.choice(["delete", "value", "value", "unknown", "misplace", "syntax", "bytes", "empty"])
    if kind == "syntax":
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        lines.insert(i, rng.choice(["  : : [", "\t- bad", "key: [unclosed", "{{", "a: b: c"]))
        return kind, None, "\n".join(lines).encode()
    if kind == "bytes":
        raw = bytearray(text.encode())
        raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0xC3, 0x80, 0xFE])
        return kind, None, bytes(raw)
    if kind == "empty":
        return kind, None, b""
    data = copy.deepcopy(data)
    key = rng.choice(_keys(data))
    parent, last = _get_parent(data, key)
    if kind == "delete":
        del parent[last]
    elif kind == "value":
        parent[last] = rng.choice(BAD_VALUES)
    elif kind == "unknown":
        node = parent[last] if isinstance(parent[last], dict) else parent
        name = rng.choice(["nitre", "lr", "rank_", "bogus", "schedular", "strenght"])
        node[name] = 1
        key = f"{key}.{name}" if node is not parent else (key.rsplit(".", 1)[0] + "." + name if "." in key else name)
    elif kind == "misplace":
        value = parent.pop(last)
        target = rng.choice([k for k in _keys(data) if isinstance(_get_parent(data, k)[0][_get_parent(data, k)[1]],
                                                                   dict)] or [""])
        node = _get_parent(data, target)[0][_get_parent(data, target)[1]] if target else data
        node[last] = value
        key = f"{target}.{last}" if target else last
    return kind, key, yaml.safe_dump(data).encode()


def _one_line(msg: str) -> bool:
    return "\n" not in msg.strip() and len(msg) < 600


@pytest.mark.parametrize("source", OPTIONS, ids=lambda p: p.name)
def test_fuzzed_options_are_accepted_or_one_line_errors(source, tmp_path):
    rng = random.Random(source.name)
    text = source.read_text()
    counts = {"tried": 0, "accepted": 0, "refused": 0}
    for i in range(FUZZ_CASES):
        kind, key, raw = mutate(text, rng)
        path = tmp_path / f"m{i}.yml"
        path.write_bytes(raw)
        counts["tried"] += 1
        try:
            load_options(path, is_train=rng.random() < 0.5, root=tmp_path, check_paths=False)
            counts["accepted"] += 1
        except OWN_ERRORS as e:
            counts["refused"] += 1
            msg = str(e)
            assert _one_line(msg), (kind, key, msg)
            assert str(path) in msg, (kind, msg)  # every message names the file...
            if kind in ("value", "delete") and key and "unknown key" not in msg:
                # ...and a key error names the key, a parent block, or the key it depends on
                named = [key.rsplit(".", n)[0] for n in range(key.count(".") + 1)]
                assert any(k in msg for k in named) or ": " in msg, (kind, key, msg)
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"{kind} mutation of {key} in {source.name} raised {type(e).__name__}: {e}\n"
                        f"{raw.decode(errors='replace')}")
    FUZZ_COUNTS[f"options/{source.name}"] = counts
    assert counts["tried"] == FUZZ_CASES


def test_fuzzed_options_through_check_options_cli(tmp_path, capsys):
    rng = random.Random(7)
    text = OPTIONS[0].read_text()
    codes = []
    for i in range(15):
        _, _, raw = mutate(text, rng)
        path = tmp_path / f"c{i}.yml"
        path.write_bytes(raw)
        codes.append(cli_main(["check-options", "-opt", str(path), "--no-check-paths"]))
        err = capsys.readouterr().err.strip()
        if codes[-1]:
            assert codes[-1] == 2 and len(err.splitlines()) == 1 and err.startswith("daclip-lora check-options: error:")
    assert set(codes) <= {0, 2}


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_options_path_not_a_file(tmp_path, kind):
    path = tmp_path / "dir.yml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(IsADirectoryError if kind == "directory" else FileNotFoundError, match=str(path)):
        load_options(path, is_train=False)


# ------------------------------------------------------------------------------------ images
def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (no pixel data): a decompression-bomb-shaped file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _image_cases(rng: random.Random):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    png, jpg = _encode(rgb, "PNG"), _encode(rgb, "JPEG")
    cases = {
        "zero-byte.png": b"", "1x1.png": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "16bit.png": _encode(Image.fromarray(np.full((8, 9), 40000, np.uint16)), "PNG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"), "palette.png": _encode(rgb.convert("P"), "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"), "huge.png": _png_header_only(100_000, 100_000),
        "text.png": b"not an image at all", "bmp.bmp": _encode(rgb, "BMP"),
    }
    for i in range(12):
        src = rng.choice([png, jpg])
        cases[f"trunc{i}.{'png' if src is png else 'jpg'}"] = src[:rng.randrange(1, len(src))]
    for i in range(8):
        raw = bytearray(rng.choice([png, jpg]))
        for _ in range(rng.randint(1, 20)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cases[f"flip{i}.png"] = bytes(raw)
    return cases


def test_fuzzed_images_are_read_or_one_line_errors(tmp_path):
    counts = {"tried": 0, "accepted": 0, "refused": 0}
    for name, raw in _image_cases(random.Random(3)).items():
        path = tmp_path / name
        path.write_bytes(raw)
        counts["tried"] += 1
        try:
            arr = read_image(path)
            assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.float32
            assert 0.0 <= arr.min() and arr.max() <= 1.0
            counts["accepted"] += 1
        except ImageError as e:
            assert _one_line(str(e)) and str(path) in str(e), str(e)
            counts["refused"] += 1
    FUZZ_COUNTS["images"] = counts
    assert counts["accepted"] >= 6  # 1x1, 16-bit, CMYK, palette, RGBA, BMP are all readable


def test_huge_image_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match=r"100000x100000 image has 10000000000 pixels, above the limit"):
        read_image(path)
    small = tmp_path / "small.png"
    small.write_bytes(_encode(Image.new("RGB", (30, 20)), "PNG"))
    with pytest.raises(ImageError, match="600 pixels, above the limit of 599"):
        read_image(small, max_pixels=599)
    assert read_image(small, max_pixels=600).shape == (20, 30, 3)


# ------------------------------------------------------------------------------- checkpoints
def test_fuzzed_checkpoints_load_or_one_line_errors(tmp_path, tiny):
    from safetensors.torch import save_file

    rng = random.Random(11)
    good_st, good_pt = tmp_path / "good.safetensors", tmp_path / "good.pt"
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if not k.startswith("visual.")}
    save_file(sd, str(good_st))
    torch.save({"state_dict": tiny.state_dict()}, good_pt)
    raw_st, raw_pt = good_st.read_bytes(), good_pt.read_bytes()
    counts = {"tried": 0, "accepted": 0, "refused": 0}
    cases = {"empty.safetensors": b"", "empty.pt": b"", "text.pt": b"hello", "text.safetensors": b"{not json"}
    for i in range(10):
        cases[f"trunc{i}.safetensors"] = raw_st[:rng.randrange(1, len(raw_st))]
        cases[f"trunc{i}.pt"] = raw_pt[:rng.randrange(1, len(raw_pt))]
    for i in range(6):  # corrupt the safetensors header (its first bytes) or random bytes anywhere
        raw = bytearray(raw_st)
        lo, hi = (8, 200) if i % 2 == 0 else (0, len(raw))
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(lo, hi)] = rng.randrange(256)
        cases[f"flip{i}.safetensors"] = bytes(raw)
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        counts["tried"] += 1
        try:
            load_checkpoint(copy.deepcopy(tiny), path)
            counts["accepted"] += 1
        except (CheckpointError, FileNotFoundError) as e:
            assert _one_line(str(e)) and str(path) in str(e), (name, str(e))
            counts["refused"] += 1
    FUZZ_COUNTS["checkpoints"] = counts
    assert counts["refused"] >= 24  # every empty, text and truncated file


def test_load_state_dict_of_a_folder_is_one_line(tmp_path):
    with pytest.raises((CheckpointError, FileNotFoundError, IsADirectoryError)) as e:
        load_state_dict(tmp_path)
    assert _one_line(str(e.value))
