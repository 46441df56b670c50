"""A task registered from outside the package trains, saves its output and is tested through the CLI, with the
option keys it declares (and only those) accepted."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from daclip_lora.apps.cli import main
from daclip_lora.training.engine import TrainTask
from daclip_lora.training.tasks import TASKS, TaskSpec, register_task


class ToyTrainer(TrainTask):
    """Fits y = x1 + x2 with one linear layer."""

    def __init__(self, opt, data: bool = True):
        self.opt = opt
        torch.manual_seed(0)
        self.model = nn.Linear(2, 1)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        self.data = [{"x": x[i], "y": x[i].sum(0, keepdim=True)} for i in range(len(x))]

    def train_dataset(self):
        return self.data

    def training_step(self, model, batch):
        return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean()}

    def save_outputs(self, out_dir):
        from safetensors.torch import save_file

        (out_dir / "toy").mkdir(parents=True, exist_ok=True)
        save_file(self.model.state_dict(), str(out_dir / "toy" / "toy.safetensors"))


def evaluate_toy(opt, folder=None):
    from pathlib import Path

    from safetensors.torch import load_file

    weights = load_file(str(Path(folder or Path(opt.path.root) / "experiments" / opt.name / "models" / "toy")
                            / "toy.safetensors"))
    return {"weight": weights["weight"].flatten().tolist()}


@pytest.fixture
def toy_task():
    register_task(TaskSpec("toy", "test_toy_task:ToyTrainer", "toy", "test_toy_task:evaluate_toy",
                           blocks={}))
    yield
    TASKS.unregister("toy")


def _options(tmp_path, extra=""):
    (tmp_path / "captions").mkdir(exist_ok=True)
    yml = tmp_path / "toy.yml"
    yml.write_text(f"""name: toy
task: toy
datasets:
  train: {{mode: captions, dataroot: {tmp_path / 'captions'}, batch_size: 8}}
train: {{lr_G: 0.05, niter: 60, warmup_iter: 0, val_freq: 0, lr_scheme: constant}}
logger: {{print_freq: 100, save_checkpoint_freq: 60}}
runtime: {{device: cpu}}
{extra}""")
    return yml


def test_a_registered_task_trains_saves_and_tests_through_the_cli(toy_task, tmp_path, capsys):
    yml = _options(tmp_path)
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path)]) == 0
    assert (tmp_path / "experiments" / "toy" / "models" / "toy" / "toy.safetensors").is_file()
    capsys.readouterr()
    assert main(["test", "-opt", str(yml), "--root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    weight = json.loads(printed[:printed.index("results:")])["weight"]
    assert weight == pytest.approx([1.0, 1.0], abs=0.1)  # it learned y = x1 + x2


@pytest.mark.parametrize("extra, message", [
    ("sd: {fusion: true}\n", r"sd.fusion: set, but task toy never reads it \(it is read by task restoration\)"),
    ("task: toyy\n", "task: expected one of .*toy.*got 'toyy'. Did you mean: toy"),
])
def test_a_registered_task_gets_the_option_checks(toy_task, tmp_path, capsys, extra, message):
    yml = _options(tmp_path, extra)
    if extra.startswith("task:"):
        yml.write_text(yml.read_text().replace("task: toy\n", "", 1))
    assert main(["check-options", "-opt", str(yml), "--root", str(tmp_path), "--train"]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_adapter_is_refused_for_a_task_without_a_controller_lora(toy_task, tmp_path, capsys):
    yml = _options(tmp_path)
    assert main(["test", "-opt", str(yml), "--root", str(tmp_path), "--adapter", str(tmp_path)]) == 2
    assert "--adapter: task toy reads no controller LoRA (daclip.adapter); drop --adapter" in capsys.readouterr().err


@dataclasses.dataclass
class ToyBlockOptions:
    """A block a task from outside declares: no ``extra`` field, so nothing may be kept unread."""

    scale: float = 1.0


@pytest.mark.parametrize("extra, outcome", [
    ("sd: {scale: 2.0}\n", 2.0),
    ("sd: {scael: 2.0}\n", r"sd.scael: unknown key. Did you mean: scale"),
])
def test_a_registered_tasks_own_block_is_strict(tmp_path, capsys, extra, outcome):
    from daclip_lora.training.options import load_options

    register_task(TaskSpec("toy_strict", "test_toy_task:ToyTrainer", "toy", blocks={"sd": ToyBlockOptions}))
    try:
        yml = _options(tmp_path, extra)
        yml.write_text(yml.read_text().replace("task: toy\n", "task: toy_strict\n"))
        if isinstance(outcome, float):
            assert load_options(yml, is_train=True, root=tmp_path).sd.scale == outcome
        else:
            assert main(["check-options", "-opt", str(yml), "--root", str(tmp_path), "--train"]) == 2
            import re

            assert re.search(outcome, capsys.readouterr().err)
    finally:
        TASKS.unregister("toy_strict")
