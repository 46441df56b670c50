"""The real architectures, end to end on the CPU: random-weight SD 1.5 and SDXL base at full size train 2 steps at
64 px with gradient checkpointing, export and restore one image (slow: minutes and up to ~15 GB of RAM each; run
with DACLIP_LORA_SLOW_TESTS=1). Timings and peak RSS: bench/gpu_train.py --device cpu, docs/benchmarks.md."""

import pytest
import torch

from daclip_lora.restoration.pipeline import RestorationPipeline
from daclip_lora.tiny.sd import build_tiny_sd
from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer

from conftest import SD_DEGS


@pytest.mark.slow
@pytest.mark.parametrize("family, parameters", [("sd1", 859_520_964), ("sdxl", 2_567_463_684)])
def test_a_full_size_base_trains_exports_and_restores(family, parameters, sd_assets, tmp_path):
    base = build_tiny_sd(tmp_path / "base", family=family, full_size=True)
    yml = tmp_path / "train.yml"
    yml.write_text(f"""name: real
task: restoration
distortion: [{', '.join(SD_DEGS)}]
datasets:
  train: {{mode: MD, dataroot: {sd_assets / 'ds' / 'train'}, batch_size: 1, patch_size: 64}}
daclip: {{model: daclip_ViT-B-32}}
sd: {{base: {base}, lora: {{rank: 4, alpha: 4}}, objective: one_step, conditioning: {{time_embedding: true}}}}
train: {{niter: 2, warmup_iter: 0, val_freq: 0}}
logger: {{print_freq: 1, save_checkpoint_freq: 2}}
runtime: {{device: cpu, gradient_checkpointing: true}}
""")
    opt = load_options(yml, is_train=True, root=tmp_path)
    trainer = RestorationTrainer(opt)
    assert sum(p.numel() for p in trainer.sd.unet.parameters() if not p.requires_grad) >= parameters
    losses = Engine(opt, trainer).fit().losses
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    del trainer
    pipe = RestorationPipeline.from_pretrained(tmp_path / "experiments" / "real" / "models" / "restoration",
                                               device="cpu")
    out = pipe(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
