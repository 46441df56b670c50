"""Run by tests via `accelerate launch --num_processes 2 --cpu`: train, then save each rank's weights."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from daclip_lora.training.engine import Engine
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer

options, root = sys.argv[1], Path(sys.argv[2])
opt = load_options(options, is_train=True, root=root)
trainer = RestorationTrainer(opt)
engine = Engine(opt, trainer)
engine.fit()
rank = engine.accelerator.process_index
save_file({k: v.detach().contiguous() for k, v in trainer.trainable_state().items()}, str(root / f"rank{rank}.safetensors"))
