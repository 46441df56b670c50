import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import daclip_lora
import daclip_lora.clip.factory  # noqa: F401  (registers the built-in configs before any test snapshots them)
import daclip_lora.clip.registry  # noqa: F401

TINY = "daclip_tiny"

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one intra-op thread per worker, no oversubscription
    torch.set_num_threads(1)


def randomize_zero_modules(model, std=0.02, seed=1):
    """Give the controller's zero modules non-zero weights so that control changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for z in model.visual_control.transformer.zero_modules:
            z.weight.copy_(torch.randn(z.weight.shape, generator=g) * std)
            z.bias.copy_(torch.randn(z.bias.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return daclip_lora.create_model(TINY)


SD_DEGS = ["noisy", "hazy"]


@pytest.fixture(scope="session")
def sd_assets(tmp_path_factory):
    """A random tiny SD folder (``tiny_sd/``) and a 2-degradation MD dataset (``ds/``), shared by the SD tests."""
    from daclip_lora.data.synthetic import make_dataset
    from daclip_lora.tiny.sd import build_tiny_sd

    root = tmp_path_factory.mktemp("sd")
    build_tiny_sd(root / "tiny_sd", seed=0)
    make_dataset(root / "ds", size=4, val_size=2, patch_size=32, distortions=SD_DEGS, seed=0)
    return root


@pytest.fixture(scope="session")
def metric_hub(tmp_path_factory):
    """A torch hub folder of stand-in pyiqa weights (LPIPS, DISTS, NIQE, FID; tests/metric_stand_ins.py)."""
    pytest.importorskip("pyiqa")
    import metric_stand_ins

    return metric_stand_ins.all_stand_ins(tmp_path_factory.mktemp("metric_hub"))


@pytest.fixture
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.fixture(autouse=True)
def _isolated_registry():
    """Configs a test registers must not leak into the next test."""
    reg = daclip_lora.clip.registry
    saved = dict(reg._MODEL_CONFIGS), dict(reg._CONFIG_SOURCES)
    yield
    reg._MODEL_CONFIGS.clear()
    reg._MODEL_CONFIGS.update(saved[0])
    reg._CONFIG_SOURCES.clear()
    reg._CONFIG_SOURCES.update(saved[1])


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (minutes each: inductor compilation) run only with ``DACLIP_LORA_SLOW_TESTS=1``."""
    if os.environ.get("DACLIP_LORA_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set DACLIP_LORA_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


_WORKER_FUZZ_COUNTS: list = []  # pytest -n N: the counts each xdist worker sent back (pytest_testnodedown)


def _fuzz_counts() -> dict:
    import sys

    fuzz = sys.modules.get("test_fuzz")
    return dict(getattr(fuzz, "FUZZ_COUNTS", None) or {})


def pytest_sessionfinish(session):
    """An xdist worker hands its fuzz counts to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz_counts"] = _fuzz_counts()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_FUZZ_COUNTS.append(getattr(node, "workeroutput", {}).get("fuzz_counts", {}))


def pytest_terminal_summary(terminalreporter):
    """Print the fuzz counts (tests/test_fuzz.py) at the end of the run, summed over xdist workers."""
    counts: dict = {}
    for part in [_fuzz_counts(), *_WORKER_FUZZ_COUNTS]:
        for name, c in part.items():
            total = counts.setdefault(name, {"tried": 0, "accepted": 0, "refused": 0})
            for key in total:
                total[key] += c[key]
    if counts:
        terminalreporter.section("fuzz")
        for name, c in sorted(counts.items()):
            terminalreporter.write_line(f"{name}: {c['tried']} tried, {c['accepted']} accepted, "
                                        f"{c['refused']} one-line errors, 0 other exceptions")
