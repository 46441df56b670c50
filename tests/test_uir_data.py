"""A UIR universal tree named as its source datasets name their pairs, and a DA-CLIP CSV written as DA-CLIP's
generate_captions.py writes it (paths relative to where it ran, the CSV in datasets/universal/), train from the
repository root with `daclip-lora train`."""

import numpy as np
import pytest

from daclip_lora.apps.cli import main
from daclip_lora.data.degrade import degrade
from daclip_lora.data.images import write_image

#: degradation -> (LQ name, GT name) per pair, as the source datasets name them
TREE = {
    "rainy": [(f"rain-{i:03d}.png", f"norain-{i:03d}.png") for i in range(1, 5)],  # Rain100H
    "raindrop": [(f"{i}_rain.png", f"{i}_clean.png") for i in range(4)],  # RainDrop
    "hazy": [(f"{i:04d}_0.9_0.2.jpg", f"{i:04d}.png") for i in range(48, 50)],  # RESIDE, fewer images
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """``datasets/universal/{train,val}/<degradation>/{LQ,GT}`` and ``datasets/universal/daclip_{train,val}.csv``."""
    root = tmp_path_factory.mktemp("uir")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rows = ["filepath\ttitle"]
        for deg, names in TREE.items():
            for lq_name, gt_name in names:
                gt = rng.random((40, 40, 3)).astype(np.float32)
                folder = root / "datasets" / "universal" / split / deg
                write_image(folder / "GT" / gt_name, gt)
                write_image(folder / "LQ" / lq_name, degrade(gt, deg, seed=0))
                rows.append(f"datasets/universal/{split}/{deg}/LQ/{lq_name}\ta photo of noise: {deg}")
        (root / "datasets" / "universal" / f"daclip_{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_restoration_trains_on_the_uir_tree_from_the_repository_root(repo, sd_assets, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    (repo / "train.yml").write_text(f"""name: uir
task: restoration
distortion: [{', '.join(TREE)}]
datasets:
  train: {{mode: MD, dataroot: datasets/universal/train, batch_size: 3, patch_size: 32}}
  val: {{mode: MD, dataroot: datasets/universal/val, n_per_degradation: 1}}
daclip: {{model: daclip_tiny}}
sd: {{base: {sd_assets / 'tiny_sd'}, lora: {{rank: 4, alpha: 4}}, objective: one_step}}
train: {{niter: 2, val_freq: 2}}
runtime: {{device: cpu}}
""")
    assert main(["train", "-opt", "train.yml", "--dry-run"]) == 0
    assert "train: 10 (rainy 4, raindrop 4, hazy 2)" in capsys.readouterr().out
    assert main(["train", "-opt", "train.yml"]) == 0
    assert (repo / "experiments" / "uir" / "models" / "restoration" / "restoration.json").is_file()


def test_controller_trains_on_the_csv_as_generate_captions_writes_it(repo, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "controller.yml").write_text(f"""name: uir_controller
task: controller
distortion: [{', '.join(TREE)}]
datasets:
  train: {{mode: CSV, csv: datasets/universal/daclip_train.csv, batch_size: 4}}
  val: {{mode: CSV, csv: datasets/universal/daclip_val.csv}}
daclip: {{model: daclip_tiny}}
controller: {{lora: {{rank: 4, alpha: 4}}}}
train: {{niter: 2, val_freq: 2}}
runtime: {{device: cpu}}
""")
    assert main(["train", "-opt", "controller.yml"]) == 0
    assert (repo / "experiments" / "uir_controller" / "models" / "controller_lora").is_dir()
