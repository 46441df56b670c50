"""pyiqa metrics: protocol, agreement with our PSNR/SSIM, folder pairing, offline weights (stand-ins), CLI."""

import json
import socket
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

pyiqa = pytest.importorskip("pyiqa")

from daclip_lora.apps.cli import main  # noqa: E402
from daclip_lora.data.images import write_image  # noqa: E402
from daclip_lora.metrics import (METRICS, MissingMetricWeights, evaluate_folders, format_evaluation,  # noqa: E402
                                 pair_folders, resolve_metrics, weights_guard, write_evaluation)
import daclip_lora.metrics.iqa as iqa  # noqa: E402


class NetworkAccess(BaseException):
    """Not an Exception: no ``except Exception`` on the way (ours or pyiqa's) can swallow it."""


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host or open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise NetworkAccess(f"network access attempted: {args[:2]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def hub(metric_hub):
    return metric_hub


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """A UIR-style tree: ``gt/<deg>/GT/<name>.png`` and ``restored/<deg>/<name>.png`` (two sizes)."""
    from skimage import data

    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    photos = {"astronaut": data.astronaut()[:96, :128], "coffee": data.coffee()[:96, :128],
              "chelsea": data.chelsea()[:112, :144]}  # NIQE needs 96 px blocks
    for deg, sigma in (("noisy", 0.08), ("blurry", 0.02)):
        for name, img in photos.items():
            gt = img.astype(np.float32) / 255
            write_image(root / "gt" / deg / "GT" / f"{name}.png", gt)
            write_image(root / "gt" / deg / "LQ" / f"{name}.png", gt[::-1])  # must not be picked up
            write_image(root / "restored" / deg / f"{name}.png",
                        np.clip(gt + rng.normal(0, sigma, gt.shape), 0, 1).astype(np.float32))
    (root / "restored" / "noisy" / "grids").mkdir()
    write_image(root / "restored" / "noisy" / "grids" / "astronaut.png", np.zeros((8, 8, 3), np.float32))
    return root


# ------------------------------------------------------------------------------------------ pairing
def test_pairs_match_uir_gt_folders_and_skip_grids(folders):
    pairs = pair_folders(folders / "restored", folders / "gt")
    assert len(pairs) == 6
    assert {p.group for p in pairs} == {"noisy", "blurry"}
    assert all(p.gt.parent.name == "GT" and p.gt.stem == p.restored.stem for p in pairs)


def test_unmatched_images_are_named(folders, tmp_path):
    write_image(tmp_path / "extra.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"1 of 1 restored images have no ground truth .*extra.png"):
        pair_folders(tmp_path, folders / "gt")


def test_size_mismatch_is_one_line(folders, tmp_path):
    write_image(tmp_path / "noisy" / "coffee.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"is \(8, 8\) pixels but its ground truth .* is \(96, 128\)"):
        evaluate_folders(tmp_path, folders / "gt", metrics=["psnr"])


# ------------------------------------------------------------------------------------------ agreement
# Tolerances reached here. PSNR: pyiqa works in float32, we in float64. SSIM-Y: pyiqa clamps the
# contrast-structure map at 0 (F.relu) where BasicSR/skimage keep negative values, which moves noisy images.
AGREEMENT = [("psnr", 0, 5e-4), ("psnr_y", 0, 5e-4), ("ssim", 0, 1e-5), ("ssim_y", 0, 3e-3),
             ("psnr_y", 4, 5e-4), ("ssim_y", 4, 3e-3)]


@pytest.mark.parametrize("metric,crop,tol", AGREEMENT)
def test_own_psnr_ssim_agree_with_pyiqa(folders, metric, crop, tol):
    ours_report = None
    with mock.patch.object(iqa, "pyiqa_version", lambda: None):
        ours_report = evaluate_folders(folders / "restored", folders / "gt", metrics=[metric], crop_border=crop)
    theirs = evaluate_folders(folders / "restored", folders / "gt", metrics=[metric], crop_border=crop)
    assert ours_report["protocol"]["metrics"][metric]["implementation"] == "daclip_lora"
    assert theirs["protocol"]["metrics"][metric]["implementation"].startswith("pyiqa ")
    diffs = [abs(a[metric] - b[metric]) for a, b in zip(ours_report["per_image"], theirs["per_image"])]
    assert max(diffs) < tol


def test_metric_failure_on_an_image_is_one_line(hub, tmp_path):
    write_image(tmp_path / "small.png", np.full((40, 40, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"^metric 'niqe' failed on .*small.png \(40x40 px\): "):
        evaluate_folders(tmp_path, metrics=["niqe"], weights_dir=hub)


def test_noisier_group_scores_lower(folders):
    report = evaluate_folders(folders / "restored", folders / "gt", metrics=["psnr_y"])
    assert report["groups"]["noisy"]["psnr_y"] < report["groups"]["blurry"]["psnr_y"] - 5


# ------------------------------------------------------------------------------------------ pyiqa numbers
@pytest.mark.parametrize("metric", ["lpips", "dists", "niqe", "psnr_y", "ssim_y"])
def test_evaluate_reproduces_pyiqa_on_the_files(folders, hub, no_network, metric):
    """Our pairing, reading and batching give pyiqa's own numbers on the same files (pyiqa reads them itself)."""
    report = evaluate_folders(folders / "restored", folders / "gt", metrics=[metric], weights_dir=hub, batch_size=2)
    spec = METRICS[metric]
    with weights_guard(metric, hub):
        net = pyiqa.create_metric(spec.pyiqa_id, device=torch.device("cpu"), **spec.options)
    for row in report["per_image"]:
        restored = str(folders / "restored" / f"{row['name']}.png")
        gt = str(folders / "gt" / row["group"] / "GT" / f"{Path(row['name']).name}.png")
        expected = float(net(restored) if spec.mode == "NR" else net(restored, gt))
        assert row[metric] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert report["protocol"]["metrics"][metric]["pyiqa_id"] == spec.pyiqa_id


def test_identical_images_have_zero_lpips_and_dists(folders, hub, no_network):
    gt = folders / "gt" / "noisy" / "GT"
    report = evaluate_folders(gt, gt, metrics=["lpips", "dists"], weights_dir=hub)
    restored = evaluate_folders(folders / "restored", folders / "gt", metrics=["lpips", "dists"], weights_dir=hub)
    assert report["mean"]["lpips"] < 1e-6 and report["mean"]["dists"] < 1e-6
    assert restored["groups"]["noisy"]["lpips"] > 10 * max(report["mean"]["lpips"], 1e-7)


def test_fid_uses_only_the_evaluated_pairs(folders, hub, no_network, tmp_path):
    """FID of the pairs equals pyiqa's FID on flat folders holding exactly those images (not the LQ/ ones)."""
    report = evaluate_folders(folders / "restored", folders / "gt", metrics=["fid"], weights_dir=hub)
    pairs = pair_folders(folders / "restored", folders / "gt")
    for side in ("r", "g"):
        (tmp_path / side).mkdir()
    for i, p in enumerate(pairs):
        (tmp_path / "r" / f"{i}.png").write_bytes(p.restored.read_bytes())
        (tmp_path / "g" / f"{i}.png").write_bytes(p.gt.read_bytes())
    with weights_guard("fid", hub):
        expected = float(pyiqa.create_metric("fid", device=torch.device("cpu"))(
            str(tmp_path / "r"), str(tmp_path / "g"), num_workers=0, verbose=False))
    assert report["folder"]["fid"] == pytest.approx(expected, abs=1e-9)
    assert report["protocol"]["metrics"]["fid"]["reference_folder"] == str(folders / "gt")


# ------------------------------------------------------------------------------------------ missing weights
NEEDS_WEIGHTS = ["lpips", "lpips_vgg", "dists", "niqe", "musiq", "maniqa-pipal", "clipiqa", "fid"]


@pytest.mark.parametrize("metric", NEEDS_WEIGHTS)
def test_missing_weights_are_one_line_without_network(folders, tmp_path, no_network, metric):
    with pytest.raises(MissingMetricWeights) as info:
        evaluate_folders(folders / "restored", folders / "gt", metrics=[metric], weights_dir=tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message and f"metric {metric!r} needs " in message
    assert str(tmp_path / "empty") in message or "Hugging Face" in message


def test_failed_download_is_one_line(folders, tmp_path, monkeypatch):
    """Downloads on (no offline variable) and the host unreachable: the same one line, saying the download failed."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DACLIP_LORA_OFFLINE", raising=False)
    calls = []

    def unreachable(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    with pytest.raises(MissingMetricWeights, match=r"needs niqe_modelparameters.mat, .* the download failed"):
        evaluate_folders(folders / "restored", metrics=["niqe"], weights_dir=tmp_path)
    assert calls == ["huggingface.co"]


def test_skip_missing_lists_what_was_skipped(folders, tmp_path, no_network):
    report = evaluate_folders(folders / "restored", folders / "gt", metrics=["psnr_y", "musiq"],
                              weights_dir=tmp_path, skip_missing=True)
    assert list(report["skipped"]) == ["musiq"] and "musiq_koniq_ckpt" in report["skipped"]["musiq"]
    assert report["mean"]["n"] == 6 and "psnr_y" in report["mean"]
    assert "skipped musiq" in format_evaluation(report)


def test_pyiqa_absent_names_the_extra(folders):
    with mock.patch.object(iqa, "pyiqa_version", lambda: None):
        with pytest.raises(Exception, match=r"'lpips' is computed by pyiqa, which is not installed: pip install"):
            evaluate_folders(folders / "restored", folders / "gt", metrics=["lpips"])


# ------------------------------------------------------------------------------------------ reports and CLI
def test_reports_carry_the_protocol(folders, tmp_path):
    report = evaluate_folders(folders / "restored", folders / "gt", metrics=["psnr_y", "ssim"], crop_border=2)
    paths = write_evaluation(report, tmp_path)
    saved = json.loads(paths[0].read_text())
    assert saved["format_version"] == 1 and saved["protocol"]["pyiqa_version"] == iqa.pyiqa_version()
    assert saved["protocol"]["metrics"]["psnr_y"]["options"] == {"test_y_channel": True, "color_space": "ycbcr",
                                                                 "crop_border": 2}
    rows = paths[2].read_text().splitlines()
    assert rows[0] == "group,psnr_y,ssim,n" and [r.split(",")[0] for r in rows[1:]] == ["blurry", "noisy", "mean"]
    assert len(paths[1].read_text().splitlines()) == 7


@pytest.mark.parametrize("argv,names", [
    (["--metrics", "psnr_y", "ssim"], ["psnr_y", "ssim"]),
    (["--metrics", "psnr_y,ssim"], ["psnr_y", "ssim"]),
    (["--metrics", "psnr_y,", "ssim,psnr_y"], ["psnr_y", "ssim"]),
    (["--metrics", " psnr_y , ssim "], ["psnr_y", "ssim"]),
])
def test_cli_metric_lists_take_spaces_or_commas(folders, tmp_path, argv, names):
    assert main(["evaluate", "--restored", str(folders / "restored"), "--gt", str(folders / "gt"), *argv,
                 "--out", str(tmp_path)]) == 0
    assert list(json.loads((tmp_path / "metrics.json").read_text())["protocol"]["metrics"]) == names


@pytest.mark.parametrize("names,message", [
    ("psnr,ssimm", "unknown metric 'ssimm'.*Did you mean: ssim"),
    (["psnr", "lpip,ssim"], "unknown metric 'lpip'.*Did you mean: lpips"),
])
def test_comma_lists_still_name_an_unknown_metric(names, message):
    with pytest.raises(ValueError, match=message):
        resolve_metrics(names, has_gt=True)


@pytest.mark.parametrize("argv,message", [
    (["--metrics", "lpip"], "unknown metric 'lpip'"),
    (["--metrics", "psnr,lpip"], "unknown metric 'lpip'"),
    (["--metrics", "psnr", "--no-gt"], "compares with the ground truth: pass --gt"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_cli_argument_errors(folders, capsys, argv, message):
    gt = [] if "--no-gt" in argv else ["--gt", str(folders / "gt")]
    argv = [a for a in argv if a != "--no-gt"]
    assert main(["evaluate", "--restored", str(folders / "restored"), *gt, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_evaluate_writes_reports(folders, hub, tmp_path, capsys, no_network):
    code = main(["evaluate", "--restored", str(folders / "restored"), "--gt", str(folders / "gt"), "--metrics",
                 "psnr_y", "lpips", "--weights-dir", str(hub), "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "psnr_y↑" in out and "lpips↓" in out and "noisy" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["mean"]["n"] == 6


def test_cli_missing_weight_exits_2(folders, tmp_path, capsys, no_network):
    code = main(["evaluate", "--restored", str(folders / "restored"), "--gt", str(folders / "gt"), "--metrics",
                 "niqe", "--weights-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "niqe_modelparameters.mat" in err


def test_restore_with_gt_scores_the_outputs(folders, tmp_path, capsys):
    lq, gt = folders / "gt" / "noisy" / "LQ", folders / "gt" / "noisy" / "GT"
    assert main(["restore", "--input", str(lq), "--output", str(tmp_path), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    assert "psnr_y↑" in out and "ssim_y↑" in out
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["mean"]["n"] == 3 and 5 < report["mean"]["psnr_y"] < 60


@pytest.mark.parametrize("argv,message", [
    (["--metrics", "psnr"], "--metrics scores the outputs against --gt"),
    (["--gt", "GT", "--metrics", "lpipz"], "unknown metric 'lpipz'"),
])
def test_restore_metric_errors_come_first(folders, tmp_path, capsys, argv, message):
    argv = [str(folders / "gt" / "noisy" / "GT") if a == "GT" else a for a in argv]
    assert main(["restore", "--input", str(folders / "gt" / "noisy" / "LQ"), "--output", str(tmp_path / "o"),
                 *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()
