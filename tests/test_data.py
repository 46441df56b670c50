"""Datasets, image decoding, degradations and make-dataset: counts, pairing and every bad-input message."""

import csv
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from daclip_lora.apps.cli import main
from daclip_lora.data.datasets import (CaptionedDataset, DatasetError, RestorationDataset, build_dataset,
                                       clip_batch, clip_tensor, pair_lqgt, pair_md, read_caption_folder, read_daclip_csv)
from daclip_lora.data.degrade import DEGRADATION_FUNCTIONS, degrade
from daclip_lora.data.images import ImageError, read_image, write_image
from daclip_lora.data.synthetic import BUILTIN_IMAGES, HELD_OUT_IMAGES, make_dataset
from daclip_lora.training.options import load_options

RNG = np.random.default_rng(0)


def _img(h=40, w=48):
    return RNG.random((h, w, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def clean():
    from skimage import data

    return data.astronaut()[100:228, 150:278].astype(np.float32) / 255.0


# ------------------------------------------------------------------------ degradations
# Upper PSNR bounds (dB) that each degradation must stay under on a 128x128 astronaut crop.
PSNR_MAX = {"motion-blurry": 28, "hazy": 18, "jpeg-compressed": 36, "low-light": 12, "noisy": 26,
            "raindrop": 32, "rainy": 22, "shadowed": 26, "snowy": 22, "uncompleted": 18}


@pytest.mark.parametrize("name", list(DEGRADATION_FUNCTIONS))
def test_degradation_is_deterministic_and_measurable(name, clean):
    a, b, c = degrade(clean, name, seed=3), degrade(clean, name, seed=3), degrade(clean, name, seed=4)
    assert a.shape == clean.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    psnr = 10 * np.log10(1.0 / np.mean((a - clean) ** 2))
    assert psnr < PSNR_MAX[name], f"{name}: PSNR {psnr:.1f} dB"


def test_unknown_degradation_suggests(clean):
    with pytest.raises(ValueError, match="unknown degradation 'nosiy'.*Did you mean: noisy"):
        degrade(clean, "nosiy")


@pytest.mark.parametrize("param,value,direction", [("sigma", 50, "lower"), ("quality", 5, "lower")])
def test_degradation_strength_parameters(param, value, direction, clean):
    name = "noisy" if param == "sigma" else "jpeg-compressed"
    mild = degrade(clean, name, seed=0, **{param: 5 if param == "sigma" else 90})
    strong = degrade(clean, name, seed=0, **{param: value})
    assert np.mean((strong - clean) ** 2) > 3 * np.mean((mild - clean) ** 2)


# ------------------------------------------------------------------------------ images
def _png16(path, a):
    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["L", "RGBA", "P", "1", "gray16", "rgb16"])
def test_read_image_converts_to_rgb_float(kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    base = (RNG.random((10, 12, 3)) * 255).astype(np.uint8)
    if kind == "gray16":
        g = (RNG.random((10, 12)) * 65535).astype(np.uint16)
        _png16(path, g)
        expected = np.repeat((g / 65535.0)[..., None], 3, axis=2)
    elif kind == "rgb16":
        a = (RNG.random((10, 12, 3)) * 65535).astype(np.uint16)
        _png16(path, a)
        expected = a / 65535.0  # kept as floats: no 8-bit step
    else:
        im = Image.fromarray(base).convert(kind)
        im.save(path)
        expected = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    out = read_image(path)
    assert out.shape == (10, 12, 3) and out.dtype == np.float32
    assert np.abs(out - expected).max() < 1e-6


def test_corrupt_image_names_path(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"bad.png: cannot read image"):
        read_image(tmp_path / "bad.png")


# ---------------------------------------------------------------------------- pairing
def _pairs(tmp_path, lq_names, gt_names, size=(40, 48)):
    for sub, names in (("LQ", lq_names), ("GT", gt_names)):
        for n in names:
            write_image(tmp_path / sub / n, _img(*size))
    return tmp_path / "LQ", tmp_path / "GT"


def test_lqgt_pairs_by_name_not_order(tmp_path):
    lq, gt = _pairs(tmp_path, ["b.png", "a.png", "c.jpg"], ["c.png", "a.png", "b.png"])
    pairs = pair_lqgt(lq, gt)
    assert [(p.lq.name, p.gt.name) for p in pairs] == [("a.png", "a.png"), ("b.png", "b.png"), ("c.jpg", "c.png")]


@pytest.mark.parametrize("lq_names,gt_names,pattern", [
    (["a.png", "x.png"], ["a.png"], r"1 LQ images without a GT partner .*: x.png"),
    (["a.png"], ["a.png", "y.png"], r"1 GT images without an LQ partner .*: y.png"),
])
def test_lqgt_missing_partner(lq_names, gt_names, pattern, tmp_path):
    lq, gt = _pairs(tmp_path, lq_names, gt_names)
    with pytest.raises(DatasetError, match=pattern):
        pair_lqgt(lq, gt)


def test_lqgt_empty_folder_and_non_image(tmp_path):
    lq, gt = _pairs(tmp_path, ["a.png"], ["a.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="empty.* is empty"):
        pair_lqgt(tmp_path / "empty", gt)
    (lq / "notes.md").write_text("x")
    with pytest.raises(ImageError, match="holds 1 non-image files: notes.md"):
        pair_lqgt(lq, gt)


def test_md_missing_degradation_folder(tmp_path):
    _pairs(tmp_path / "noisy", ["a.png"], ["a.png"])
    with pytest.raises(DatasetError, match=r"lacks <degradation>/LQ and /GT folders for: hazy \(folders present: noisy\)"):
        pair_md(tmp_path, ["noisy", "hazy"])


def test_lq_gt_size_mismatch(tmp_path):
    write_image(tmp_path / "LQ" / "a.png", _img(20, 20))
    write_image(tmp_path / "GT" / "a.png", _img(40, 40))
    with pytest.raises(DatasetError, match="is 20x20 but GT .* is 40x40"):
        RestorationDataset(pair_lqgt(tmp_path / "LQ", tmp_path / "GT"))[0]


# ------------------------------------------------------------------------ augmentation
def test_crop_flip_rot_identical_for_lq_and_gt(tmp_path):
    img = _img(40, 48)
    write_image(tmp_path / "LQ" / "a.png", img)
    write_image(tmp_path / "GT" / "a.png", img)
    ds = RestorationDataset(pair_lqgt(tmp_path / "LQ", tmp_path / "GT"), patch_size=24, use_flip=True, use_rot=True)
    torch.manual_seed(0)
    for _ in range(8):
        s = ds[0]
        assert s["LQ"].shape == s["GT"].shape == (3, 24, 24)
        assert torch.equal(s["LQ"], s["GT"])
        assert s["LQ_clip"].shape == (3, 224, 224)


@pytest.mark.parametrize("policy", ["pad", "reject"])
def test_small_images_policy(policy, tmp_path):
    lq, gt = _pairs(tmp_path, ["a.png"], ["a.png"], size=(16, 20))
    ds = RestorationDataset(pair_lqgt(lq, gt), patch_size=32, small_images=policy)
    if policy == "pad":
        assert ds[0]["LQ"].shape == (3, 32, 32)
    else:
        with pytest.raises(DatasetError, match=r"a.png is 20x16, smaller than patch_size 32"):
            ds[0]


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_corrupt_image_policy(policy, tmp_path):
    lq, gt = _pairs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    (lq / "a.png").write_bytes(b"broken")
    ds = RestorationDataset(pair_lqgt(lq, gt), on_corrupt=policy)
    if policy == "error":
        with pytest.raises(ImageError, match=r"LQ/a.png: cannot read image"):
            ds[0]
    else:
        assert ds[0]["LQ_path"].endswith("b.png")


def test_clip_tensor_matches_openai_preprocessing():
    import open_clip
    from PIL import Image as PILImage

    img = (RNG.random((60, 90, 3)) * 255).astype(np.uint8)
    ours = clip_tensor(torch.from_numpy(img.transpose(2, 0, 1)).float() / 255)
    ref = open_clip.image_transform(224, is_train=False)(PILImage.fromarray(img))
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().mean().item() < 0.05  # same pipeline; PIL vs torch bicubic differ slightly


@pytest.mark.parametrize("size,shape", [(224, (224, 224)), (64, (64, 64)), ((64, 64), (64, 64)), ((48, 80), (48, 80))])
def test_clip_batch_resizes_to_the_models_input_size(size, shape):
    x = torch.rand(2, 3, 60, 90, generator=torch.Generator().manual_seed(0))
    assert tuple(clip_batch(x, size).shape) == (2, 3, *shape)


def test_clip_batch_square_tuple_is_the_int_size():
    x = torch.rand(2, 3, 60, 90, generator=torch.Generator().manual_seed(0))
    assert (clip_batch(x, (64, 64)) - clip_batch(x, 64)).abs().max().item() == 0.0


# ------------------------------------------------------------------------- captions
def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        w.writerows(rows)


def test_daclip_csv_resolves_relative_paths(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", _img())
    _csv(tmp_path / "d.csv", [("imgs/a.png", "a red car: noisy")])
    (item,) = read_daclip_csv(tmp_path / "d.csv")
    assert (item.image, item.caption, item.degradation) == (tmp_path / "imgs" / "a.png", "a red car", "noisy")


@pytest.mark.parametrize("title", ["no separator", "a: b: noisy"])
def test_daclip_csv_bad_title_reports_row(title, tmp_path):
    write_image(tmp_path / "a.png", _img())
    _csv(tmp_path / "d.csv", [("a.png", "fine: hazy"), ("a.png", title)])
    with pytest.raises(DatasetError, match=r"d.csv: row 3: title .* must hold exactly one ': '"):
        read_daclip_csv(tmp_path / "d.csv")


def test_caption_folder_joins_lines_and_reports_missing(tmp_path):
    write_image(tmp_path / "x.png", _img())
    (tmp_path / "x.txt").write_text("a small\nwhite boat\n")
    (item,) = read_caption_folder(tmp_path)
    assert item.caption == "a small white boat"
    write_image(tmp_path / "y.png", _img())
    with pytest.raises(DatasetError, match=r"no caption \(.txt with the same name\) for y.png"):
        read_caption_folder(tmp_path)


# --------------------------------------------------------------------- make-dataset
def test_make_dataset_builtin_tree_and_counts(tmp_path):
    out = tmp_path / "ds"
    assert main(["make-dataset", str(out), "--size", "3", "--val-size", "2", "--patch-size", "32",
                 "--distortion", "noisy", "hazy", "uncompleted"]) == 0
    for split, n in (("train", 3), ("val", 2)):
        for deg in ("noisy", "hazy", "uncompleted"):
            for sub in ("LQ", "GT"):
                files = sorted((out / split / deg / sub).iterdir())
                assert [f.name for f in files] == [f"{i:05d}.png" for i in range(n)]
                assert Image.open(files[0]).size == (32, 32)
        rows = read_daclip_csv(out / f"daclip_{split}.csv")
        assert len(rows) == 3 * n and {r.degradation for r in rows} == {"noisy", "hazy", "uncompleted"}
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["counts"]["train"] == {"noisy": 3, "hazy": 3, "uncompleted": 3}
    # GT patches are shared across degradations; LQs differ.
    assert np.array_equal(read_image(out / "train/noisy/GT/00000.png"), read_image(out / "train/hazy/GT/00000.png"))
    assert not np.array_equal(read_image(out / "train/noisy/LQ/00000.png"), read_image(out / "train/hazy/LQ/00000.png"))


def test_make_dataset_is_deterministic(tmp_path):
    a = make_dataset(tmp_path / "a", size=2, val_size=2, patch_size=32, distortions=["rainy"], seed=7)
    make_dataset(tmp_path / "b", size=2, val_size=2, patch_size=32, distortions=["rainy"], seed=7)
    assert a["counts"]["train"] == {"rainy": 2}
    for rel in ("train/rainy/LQ/00001.png", "val/rainy/GT/00000.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_make_dataset_calib_split_leaves_train_and_val_unchanged(tmp_path):
    a = make_dataset(tmp_path / "a", size=2, val_size=2, patch_size=32, distortions=["rainy", "noisy"], seed=7)
    b = make_dataset(tmp_path / "b", size=2, val_size=2, patch_size=32, distortions=["rainy", "noisy"], seed=7,
                     calib_size=3)
    assert "calib" not in a["counts"] and b["counts"]["calib"] == {"rainy": 3, "noisy": 3}
    assert len(read_daclip_csv(tmp_path / "b" / "daclip_calib.csv")) == 6
    for rel in ("train/rainy/LQ/00001.png", "train/noisy/GT/00000.png", "val/noisy/LQ/00001.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # its own crops and its own degradation draws
    calib_gt = read_image(tmp_path / "b/calib/noisy/GT/00000.png")
    for split in ("train", "val"):
        assert not np.array_equal(calib_gt, read_image(tmp_path / f"b/{split}/noisy/GT/00000.png"))


def _captions(csv_path):
    return {item.caption for item in read_daclip_csv(csv_path)}


def test_make_dataset_test_split_is_cut_only_from_held_out_photographs(tmp_path):
    m = make_dataset(tmp_path / "ds", size=12, val_size=12, test_size=6, patch_size=32, distortions=["noisy"], seed=1)
    held = {BUILTIN_IMAGES[n] for n in HELD_OUT_IMAGES}
    assert m["held_out_images"] == list(HELD_OUT_IMAGES) and not set(m["images"]) & set(HELD_OUT_IMAGES)
    assert m["counts"]["test"] == {"noisy": 6} and m["test_csv"] == "daclip_test.csv"
    assert _captions(tmp_path / "ds" / "daclip_test.csv") == held  # all three, nothing else
    for split in ("train", "val"):
        assert not _captions(tmp_path / "ds" / f"daclip_{split}.csv") & held


def test_make_dataset_test_split_leaves_the_other_splits_unchanged(tmp_path):
    kw = dict(size=2, val_size=2, calib_size=2, patch_size=32, distortions=["rainy"], seed=7)
    make_dataset(tmp_path / "a", **kw)
    make_dataset(tmp_path / "b", test_size=2, **kw)
    for rel in ("train/rainy/LQ/00001.png", "val/rainy/GT/00000.png", "calib/rainy/LQ/00001.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert not (tmp_path / "a" / "test").exists() and (tmp_path / "b" / "test/rainy/LQ/00001.png").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "FOLDER", "test_size": 2}, "needs held-out images: name the source images"),
    ({"source": "FOLDER", "held_out": ["scene_9"]}, "held-out image 'scene_9' is not among the source images"),
    ({"source": "FOLDER", "held_out": ["scene_0", "scene_1"]}, "every source image is held out"),
    ({"held_out": ["chelsee"]}, "Did you mean: chelsea"),
    ({"test_size": -1}, "test_size must be >= 0, got -1"),
])
def test_make_dataset_rejects_bad_held_out_arguments(tmp_path, kwargs, message):
    src = tmp_path / "clean"
    for i in range(2):
        write_image(src / f"scene_{i}.png", _img(64, 64))
    kwargs = {k: str(src) if v == "FOLDER" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        make_dataset(tmp_path / "ds", size=1, val_size=1, patch_size=32, distortions=["noisy"], **kwargs)


def test_make_dataset_cli_writes_the_test_split_from_a_named_folder_image(tmp_path, capsys):
    src = tmp_path / "clean"
    for i in range(3):
        write_image(src / f"scene_{i}.png", _img(64, 64))
    assert main(["make-dataset", str(tmp_path / "ds"), "--source", str(src), "--size", "2", "--test-size", "1",
                 "--held-out", "scene_2", "--patch-size", "32", "--distortion", "noisy"]) == 0
    out = capsys.readouterr().out
    assert "train 2 / val 2 / test 1 LQ/GT pairs" in out and "test from held-out images scene_2" in out
    assert [(i.caption, i.degradation) for i in read_daclip_csv(tmp_path / "ds" / "daclip_test.csv")] == [
        ("scene 2", "noisy")]


def test_make_dataset_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("x")
    assert main(["make-dataset", str(tmp_path / "x"), "--size", "1"]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err


def test_make_dataset_from_folder_then_build_from_options(tmp_path):
    src = tmp_path / "clean"
    for i in range(2):
        write_image(src / f"scene_{i}.png", _img(64, 64))
    (src / "scene_0.txt").write_text("a test scene")
    make_dataset(tmp_path / "ds", source=str(src), size=2, val_size=2, patch_size=32, distortions=["noisy", "snowy"])
    yml = tmp_path / "o.yml"
    yml.write_text(f"name: t\ndistortion: [noisy, snowy]\ndatasets:\n  train:\n    mode: MD\n"
                   f"    dataroot: {tmp_path / 'ds' / 'train'}\n    patch_size: 16\n    use_flip: true\n"
                   f"  val:\n    mode: CSV\n    csv: {tmp_path / 'ds' / 'daclip_val.csv'}\n")
    opt = load_options(yml, is_train=True, root=tmp_path)
    train = build_dataset(opt.datasets["train"])
    val = build_dataset(opt.datasets["val"])
    assert isinstance(train, RestorationDataset) and len(train) == 4 and train[0]["LQ"].shape == (3, 16, 16)
    assert isinstance(val, CaptionedDataset) and len(val) == 4
    captions = {val[i]["caption"] for i in range(4)}
    assert captions == {"a test scene", "scene 1"}


# ------------------------------------------------------------------------- UIR pairing, draws and CSV paths
def _tree(root, names):
    """``root/{LQ,GT}`` with the (lq, gt) file names given, tiny images."""
    for sub in ("LQ", "GT"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (lq, gt) in enumerate(names):
        write_image(root / "LQ" / lq, np.full((4, 4, 3), i / 10, np.float32))
        write_image(root / "GT" / gt, np.full((4, 4, 3), i / 10, np.float32))


NAMING = {  # the source datasets' own pair names
    "rain100h": [(f"rain-{i:03d}.png", f"norain-{i:03d}.png") for i in (1, 2, 10)],
    "raindrop": [(f"{i}_rain.png", f"{i}_clean.png") for i in (0, 1, 2)],
    "reside": [("0048_0.9_0.2.jpg", "0048.png"), ("0049_0.8_0.1.jpg", "0049.png")],
    "srd": [("a.jpg", "a_free.jpg"), ("b.jpg", "b_free.jpg")],
}


@pytest.mark.parametrize("dataset", NAMING)
def test_sorted_pairing_takes_the_source_datasets_names(tmp_path, dataset, caplog):
    from daclip_lora.data.datasets import pair_lqgt

    _tree(tmp_path, NAMING[dataset])
    with caplog.at_level("WARNING"):
        pairs = pair_lqgt(tmp_path / "LQ", tmp_path / "GT")
    expected = list(zip(sorted(lq for lq, _ in NAMING[dataset]), sorted(gt for _, gt in NAMING[dataset])))
    assert [(p.lq.name, p.gt.name) for p in pairs] == expected
    warnings = [r.getMessage() for r in caplog.records if "paired by sorted order" in r.getMessage()]
    assert len(warnings) == 1 and f"{expected[0][0]} ~ {expected[0][1]}" in warnings[0]


@pytest.mark.parametrize("pairing,message", [
    ("name", r"paired by file name \(pairing: name\).*use pairing: sorted"),
    ("auto", r"has 3 LQ images and .* has 2 GT images"),
    ("sorted", r"has 3 LQ images and .* has 2 GT images"),
])
def test_pairing_errors_are_one_line(tmp_path, pairing, message):
    from daclip_lora.data.datasets import pair_lqgt

    _tree(tmp_path, [("a_rain.png", "a.png"), ("b_rain.png", "b.png")])
    write_image(tmp_path / "LQ" / "c_rain.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DatasetError, match=message) as info:
        pair_lqgt(tmp_path / "LQ", tmp_path / "GT", pairing=pairing)
    assert "\n" not in str(info.value)


def test_matching_names_pair_by_name_even_when_sorting_differs(tmp_path):
    from daclip_lora.data.datasets import pair_lqgt

    _tree(tmp_path, [("b.png", "b.jpg"), ("a.jpg", "a.png")])
    assert [(p.lq.name, p.gt.name) for p in pair_lqgt(tmp_path / "LQ", tmp_path / "GT")] == \
        [("a.jpg", "a.png"), ("b.png", "b.jpg")]


@pytest.mark.parametrize("groups,sizes", [(True, (40, 4)), (False, (40, 4)), (True, (10, 10, 1))])
def test_balanced_draws_mix_degradations_like_uir(groups, sizes):
    """UIR's MDDataset: each degradation equally often, whatever its size; proportional: as the sizes."""
    from daclip_lora.training.engine import ShardedBatchSampler

    members, start = [], 0
    for n in sizes:
        members.append(list(range(start, start + n)))
        start += n
    sampler = ShardedBatchSampler(start, 4, seed=0, groups=members if groups else None)
    it = iter(sampler)
    drawn = np.array([i for _ in range(500) for i in next(it)])
    share = np.array([np.isin(drawn, m).mean() for m in members])
    expected = np.full(len(sizes), 1 / len(sizes)) if groups else np.array(sizes) / start
    assert np.abs(share - expected).max() < 0.03  # 2,000 draws: a few standard errors


def test_balanced_draws_resume_exactly_and_split_over_processes():
    from daclip_lora.training.engine import ShardedBatchSampler

    groups = [list(range(0, 30)), list(range(30, 33))]
    whole = ShardedBatchSampler(33, 4, seed=5, groups=groups)
    first = [b for _, b in zip(range(20), iter(whole))]
    resumed = [b for _, b in zip(range(10), iter(ShardedBatchSampler(33, 4, seed=5, groups=groups, start=10)))]
    assert resumed == first[10:]
    halves = [[b for _, b in zip(range(20), iter(ShardedBatchSampler(33, 4, r, 2, seed=5, groups=groups)))]
              for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*halves)] == [sorted(b) for b in first]


@pytest.mark.parametrize("where", ["csv_folder", "cwd", "root", "absolute"])
def test_daclip_csv_paths_resolve_as_written(tmp_path, monkeypatch, where):
    """generate_captions.py writes paths relative to where it ran and saves the CSV in datasets/universal/;
    the released CSVs hold absolute paths."""
    from daclip_lora.data.datasets import read_daclip_csv

    image = tmp_path / "datasets" / "universal" / "train" / "noisy" / "LQ" / "x.png"
    write_image(image, np.zeros((4, 4, 3), np.float32))
    csv_path = tmp_path / "datasets" / "universal" / "daclip_train.csv"
    listed = {"csv_folder": "train/noisy/LQ/x.png", "cwd": "datasets/universal/train/noisy/LQ/x.png",
              "root": "noisy/LQ/x.png", "absolute": str(image)}[where]
    csv_path.write_text(f"filepath\ttitle\n{listed}\ta photo: noisy\n")
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "datasets" / "universal" / "train" if where == "root" else None
    (item,) = read_daclip_csv(csv_path, root=root)
    assert item.image.resolve() == image.resolve() and item.degradation == "noisy"


def test_a_missing_csv_image_names_every_location_tried(tmp_path, monkeypatch):
    from daclip_lora.data.datasets import read_daclip_csv

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.csv").write_text("filepath\ttitle\nsub/x.png\ta photo: noisy\n")
    with pytest.raises(DatasetError) as info:
        read_daclip_csv(tmp_path / "d" / "c.csv", root=tmp_path / "r")
    message = str(info.value)
    assert "sub/x.png" in message and "\n" not in message
    for base in (tmp_path / "r", tmp_path / "d", tmp_path):
        assert str(base / "sub" / "x.png") in message


# --------------------------------------------------------------- super-resolution pairs and GT-only folders
def _sr_pair(tmp_path, lq_size, gt_size=(32, 24)):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "GT" / "a.png", rng.random((*gt_size, 3)).astype(np.float32))
    write_image(tmp_path / "LQ" / "a.png", rng.random((*lq_size, 3)).astype(np.float32))
    return pair_lqgt(tmp_path / "LQ", tmp_path / "GT")


def test_super_resolution_pairs_are_upsampled_to_the_gt_and_cropped_together(tmp_path):
    pairs = _sr_pair(tmp_path, (8, 6))
    torch.manual_seed(0)
    sample = RestorationDataset(pairs, patch_size=16, scale=4)[0]
    assert sample["LQ"].shape == sample["GT"].shape == (3, 16, 16)
    whole = RestorationDataset(pairs, scale=4)[0]
    lq = torch.from_numpy(read_image(tmp_path / "LQ" / "a.png").transpose(2, 0, 1).copy())[None]
    up = torch.nn.functional.interpolate(lq, size=(32, 24), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    assert torch.allclose(whole["LQ"], up, atol=1e-6)


@pytest.mark.parametrize("lq_size,scale,message", [
    ((8, 6), None, r"LQ .* is 6x8 but GT .* is 24x32; for super-resolution pairs set scale: N"),
    ((8, 6), 2, r"with scale: 2 it must be 12x16"),
])
def test_size_mismatches_name_both_sizes(tmp_path, lq_size, scale, message):
    pairs = _sr_pair(tmp_path, lq_size)
    with pytest.raises(DatasetError, match=message):
        RestorationDataset(pairs, scale=scale)[0]


def test_gt_only_folders_are_degraded_on_the_fly_seeded_per_sample(tmp_path):
    from types import SimpleNamespace

    from daclip_lora.data.datasets import block_pairs
    from daclip_lora.data.degrade import degrade

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(tmp_path / "clean" / f"{name}.png", rng.random((20, 20, 3)).astype(np.float32))
    block = SimpleNamespace(mode="GT", dataroot_GT=str(tmp_path / "clean"), distortion=["noisy", "hazy"])
    pairs = block_pairs(block)
    assert [(p.lq, p.gt.name, p.degradation) for p in pairs] == [
        (None, "a.png", "noisy"), (None, "b.png", "noisy"), (None, "a.png", "hazy"), (None, "b.png", "hazy")]
    dataset = RestorationDataset(pairs, seed=7)
    first, again = dataset[3], dataset[3]
    assert first["degradation"] == "hazy" and torch.equal(first["LQ"], again["LQ"])
    gt = read_image(tmp_path / "clean" / "b.png")
    expected = degrade(gt, "hazy", seed=[7, 3]).astype(np.float32)
    assert torch.allclose(first["LQ"], torch.from_numpy(expected.transpose(2, 0, 1).copy()), atol=1e-6)
    assert not torch.equal(RestorationDataset(pairs, seed=8)[3]["LQ"], first["LQ"])
