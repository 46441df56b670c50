"""The embedded demo runs end to end (quick preset) and never mixes two runs' results."""

import json

from daclip_lora.apps.cli import main
from daclip_lora.tiny.locate import EMBEDDED_DACLIP


def test_quick_demo_writes_summary_and_refuses_to_mix_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "quick"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("controller_accuracy_before", "controller_accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["controller_steps"] == 6 and summary["chance"] == 0.1
    assert summary["daclip_base"] == str(EMBEDDED_DACLIP / "daclip_tiny.safetensors")
    stages = summary["stage_seconds"]
    assert list(stages) == ["dataset", "daclip_base", "controller_before", "controller", "sd_base",
                            "restoration_training", "restoration_eval", "unet_alone", "quality"]
    # image-quality metrics: each one either computed or named as skipped, with a one-line reason
    from daclip_lora.metrics import DEMO_METRICS

    quality = summary["quality"]
    assert set(quality["mean"]) | set(quality["skipped"]) == set(DEMO_METRICS)
    assert 5.0 < quality["mean"]["psnr_y"] < 60.0 and 0 < quality["mean"]["ssim_y"] <= 1 and quality["n"] == 20
    assert all(why and "\n" not in why for why in quality["skipped_why"].values())
    # the UNet alone (no fusion head), with each image's DA-CLIP embeddings and with another degradation's
    assert 5.0 < summary["psnr_unet"] < 60.0 and 5.0 < summary["psnr_unet_wrong_embedding"] < 60.0
    assert 0 <= summary["unet_degradations_improved"] <= 10 and len(summary["unet_per_degradation"]) == 10
    assert min(stages.values()) >= 0 and abs(sum(stages.values()) - summary["seconds"]) < 1.0
    assert (out / "options" / "controller_train.yml").is_file()
    # the second held-out split: photographs nothing was trained on, with the same figures
    new = summary["new_photographs"]
    assert new["images"] == ["chelsea", "coffee", "gravel"] and len(new["restoration_per_degradation"]) == 10
    assert 5.0 < new["psnr_lq"] < 60.0 and 5.0 < new["psnr_unet"] < 60.0 and 0.0 <= new["controller_accuracy_after"] <= 1
    assert new["psnr_lq"] != summary["psnr_lq"] and (out / "overview_new_photographs.png").is_file()
    printed = capsys.readouterr().out
    assert "new crops (val)" in printed and "new photographs (chelsea, coffee, gravel)" in printed
    assert main(["demo", "--out", str(out), "--preset", "quick"]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    (out / "stale.txt").write_text("old run")
    assert main(["demo", "--out", str(out), "--preset", "quick", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
