"""Real photographs in, faithful files out: ``restore`` (the shipped restorer) keeps each file's orientation, bit
depth, mode, alpha, ICC profile and EXIF; folders are mirrored; an interrupted run resumes with --skip-existing.
Every input is made here."""

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from daclip_lora.apps.cli import main
from daclip_lora.data.images import read_photo, write_image

RNG = np.random.default_rng(0)
H, W = 40, 56  # stored size; orientations 6 and 8 show it as W x H
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _rgb(h=H, w=W):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 5.0)], axis=2)
    return np.clip(base + RNG.normal(0, 0.05, base.shape), 0, 1)


def _u8(a):
    return (a * 255 + 0.5).astype(np.uint8)


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "daclip_lora test camera"  # Make
    return exif.tobytes()


def _png16(path, samples):
    """A 16-bit PNG through pypng (Pillow writes none with colour)."""
    import png

    h, w, c = samples.shape
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=16).write(f, samples.reshape(h, w * c))


#: input name -> how it is made
def _make_inputs(folder):
    folder.mkdir(parents=True)
    rgb = _rgb()
    Image.fromarray(_u8(rgb)).save(folder / "portrait6.jpg", exif=_exif(6), quality=90)
    Image.fromarray(_u8(rgb)).save(folder / "portrait8.jpg", exif=_exif(8), quality=90)
    Image.fromarray(_u8(rgb)).save(folder / "icc.jpg", icc_profile=ICC, quality=90)
    _png16(folder / "rgb16.png", (rgb * 65535).astype(np.uint16))
    _png16(folder / "gray16.png", (rgb[:, :, :1] * 65535).astype(np.uint16))
    alpha = np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1))
    Image.fromarray(np.dstack([_u8(rgb[:, :, 0]), alpha]), "LA").save(folder / "la.png")
    Image.fromarray(np.dstack([_u8(rgb), alpha]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(_u8(rgb)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(_u8(rgb)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(_u8(rgb[:, :, 0])).save(folder / "gray8.png")
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_u8(rgb)).save(folder / "nested" / "a.png")
    Image.fromarray(_u8(rgb)).save(folder / "nested" / "deeper" / "b.webp", lossless=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    _make_inputs(root / "in")
    code = main(["restore", "--input", str(root / "in"), "--output", str(root / "out")])
    return {"code": code, "in": root / "in", "out": root / "out"}


def test_every_file_is_restored_into_the_same_relative_path(run):
    assert run["code"] == 0
    inputs = sorted(p.relative_to(run["in"]) for p in run["in"].rglob("*") if p.is_file())
    outputs = sorted(p.relative_to(run["out"]) for p in run["out"].rglob("*") if p.is_file()
                     and p.name != "degradations.json")
    assert outputs == inputs and len(inputs) == 12


@pytest.mark.parametrize("name,size", [("portrait6.jpg", (H, W)), ("portrait8.jpg", (H, W)), ("icc.jpg", (W, H))])
def test_orientation_is_applied_and_reset(run, name, size):
    """Stored W x H with orientation 6 or 8 (shown H x W, portrait): the output is stored upright, orientation 1,
    and the rest of the EXIF is kept."""
    with Image.open(run["out"] / name) as im:
        assert im.size == size
        exif = im.getexif()
        if name.startswith("portrait"):
            assert exif.get(0x0112) == 1 and exif.get(0x010F) == "daclip_lora test camera"


@pytest.mark.parametrize("orientation,rotate", [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_orientation_turns_the_pixels_the_right_way(tmp_path, orientation, rotate):
    rgb = _u8(_rgb())
    Image.fromarray(rgb).save(tmp_path / "x.png", exif=_exif(orientation))
    pixels, props = read_photo(tmp_path / "x.png")
    assert np.array_equal(_u8(pixels), np.asarray(Image.fromarray(rgb).transpose(rotate)))
    assert props.orientation == orientation


def test_icc_profile_is_kept(run):
    with Image.open(run["out"] / "icc.jpg") as im:
        assert im.info.get("icc_profile") == ICC


@pytest.mark.parametrize("name,mode,planes", [("rgb16.png", "RGB", 3), ("gray16.png", "L", 1)])
def test_16_bit_pngs_stay_16_bit(run, name, mode, planes):
    import png

    _, _, rows, info = png.Reader(filename=str(run["out"] / name)).asDirect()
    samples = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    assert info["bitdepth"] == 16 and info["planes"] == planes
    assert len(np.unique(samples)) > 256  # values between the 8-bit steps: no 8-bit stage on the way


def test_16_bit_read_keeps_the_low_bits(tmp_path):
    samples = (RNG.random((8, 9, 3)) * 65535).astype(np.uint16)
    _png16(tmp_path / "x.png", samples)
    pixels, props = read_photo(tmp_path / "x.png")
    assert props.bit_depth == 16 and np.array_equal((pixels * 65535 + 0.5).astype(np.uint16), samples)


@pytest.mark.parametrize("name,mode", [("gray8.png", "L"), ("la.png", "LA"), ("rgba.png", "RGBA"),
                                       ("palette.png", "RGB"), ("cmyk.jpg", "RGB"), ("nested/a.png", "RGB")])
def test_modes_come_out_as_expected(run, name, mode):
    with Image.open(run["out"] / name) as im:
        assert im.mode == mode and im.size == (W, H)


@pytest.mark.parametrize("name", ["la.png", "rgba.png"])
def test_alpha_is_put_back_unchanged(run, name):
    src = np.asarray(Image.open(run["in"] / name))[:, :, -1]
    out = np.asarray(Image.open(run["out"] / name))[:, :, -1]
    assert np.array_equal(src, out)


def test_colour_goes_through_the_model(run):
    src = np.asarray(Image.open(run["in"] / "rgba.png"), dtype=np.int16)[:, :, :3]
    out = np.asarray(Image.open(run["out"] / "rgba.png"), dtype=np.int16)[:, :, :3]
    assert np.abs(src - out).mean() > 0.5  # restored, not copied


def test_webp_stays_lossless(run):
    out = run["out"] / "nested" / "deeper" / "b.webp"
    with Image.open(out) as im:
        decoded = np.asarray(im.convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(decoded).save(buffer, format="WEBP", lossless=True)
    assert np.array_equal(np.asarray(Image.open(buffer).convert("RGB")), decoded)
    with open(out, "rb") as f:
        assert b"VP8L" in f.read(64)  # the lossless WebP bitstream


@pytest.mark.parametrize("fmt,expected", [("png", "PNG"), ("tif", "TIFF"), ("jpg", "JPEG")])
def test_format_flag_changes_every_output(tmp_path, fmt, expected):
    write_image(tmp_path / "in" / "a.webp", _rgb())
    assert main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--format",
                 fmt]) == 0
    with Image.open(tmp_path / "out" / f"a.{fmt}") as im:
        assert im.format == expected


def test_a_16_bit_tiff_round_trips_with_its_profile(tmp_path):
    import tifffile

    samples = (RNG.random((H, W, 3)) * 65535).astype(np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "x.tif", samples, photometric="rgb", iccprofile=ICC)
    assert main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "x.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (H, W, 3) and page.iccprofile == ICC


def test_interrupted_run_resumes_with_skip_existing(run, tmp_path, capsys):
    """Outputs of a run that was cut: one missing, one half-written (not decodable). --skip-existing redoes
    those two and touches nothing else."""
    out = tmp_path / "out"
    assert main(["restore", "--input", str(run["in"]), "--output", str(out)]) == 0
    (out / "rgba.png").unlink()
    (out / "nested" / "a.png").write_bytes((out / "nested" / "a.png").read_bytes()[:100])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}
    capsys.readouterr()
    assert main(["restore", "--input", str(run["in"]), "--output", str(out), "--skip-existing"]) == 0
    assert "kept 10 output(s) of an earlier run" in capsys.readouterr().out
    changed = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.suffix != ".json"
               and before.get(p) != p.stat().st_mtime_ns}
    assert changed == {"rgba.png", "nested/a.png"}
    assert read_photo(out / "nested" / "a.png")[0].shape == (H, W, 3)


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        write_image(tmp_path / "a.png", _rgb())
    assert os.listdir(tmp_path) == []


def test_a_file_that_cannot_be_written_is_one_line_and_the_run_goes_on(tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png", _rgb())
    write_image(tmp_path / "in" / "b.png", _rgb())
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # a folder where the output should go
    assert main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "restored 1 image(s)" in out and sum("a.png: not written" in line for line in out.splitlines()) == 1
    assert read_photo(tmp_path / "out" / "b.png")[0].shape == (H, W, 3)


# ----------------------------------------------------------------------- what the default model is, said once
@pytest.mark.parametrize("argv,flag", [
    (["restore", "--input", "IMG", "--output", "OUT"], "--weights experiments/<name>/models/restoration"),
    (["degradation", "IMG"], "--model daclip_ViT-B-32 --pretrained daclip_ViT-B-32.pt"),
])
def test_shipped_models_are_named_as_demonstration_models(tmp_path, capsys, argv, flag):
    write_image(tmp_path / "a.png", _rgb())
    argv = [str(tmp_path / "a.png") if a == "IMG" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: these are the shipped")]
    assert len(notes) == 1 and "demonstration models" in notes[0] and flag in notes[0]


def test_given_weights_are_not_called_demonstration_models(tmp_path, capsys):
    from daclip_lora.tiny.locate import embedded_restorer

    write_image(tmp_path / "a.png", _rgb())
    assert main(["restore", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--weights",
                 str(embedded_restorer())]) == 0
    assert "demonstration models" not in capsys.readouterr().err


def test_app_on_the_shipped_models_says_so(monkeypatch, capsys):
    import daclip_lora.apps.web as web

    monkeypatch.setattr(web, "launch", lambda settings, **kw: None)
    assert main(["app", "--port", "7999"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: these are the shipped")]
    assert len(notes) == 1 and "--weights" in notes[0]
