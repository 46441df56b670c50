"""The package as users install it: a wheel (and a wheel built from the sdist) holds every module, model config
and tiny asset of the source tree, and runs from a non-editable install with no source tree on the path."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "daclip_lora"


def _source_files():
    """Every file of the package as the source tree has it (paths relative to the repository root)."""
    return sorted(str(p.relative_to(ROOT)).replace(os.sep, "/") for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _modules():
    """Every importable module of the source tree, as dotted names."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if "assets" in parts:
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _pip(*args, cwd=ROOT):
    run = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]


def _wheel_files(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        return sorted(n for n in z.namelist() if n.startswith("daclip_lora/"))


def _build_wheel(source, out: Path) -> Path:
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(source))
    (wheel,) = out.glob("daclip_lora-*.whl")
    return wheel


def _python_s(code: str, target: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -S``: no site, so no ``.pth`` and no editable finder; the path holds only the installed copy and the
    test venv's site-packages (for the dependencies)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-S", "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------- the tree itself
def test_every_folder_of_modules_is_a_package():
    found = set(find_packages(str(ROOT), include=["daclip_lora", "daclip_lora.*"]))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("*.py")
               if "assets" not in p.parts and "__pycache__" not in p.parts}
    assert sorted(folders - found) == [], "folders with .py files but no __init__.py (left out of a wheel)"


# --------------------------------------------------------------------------------------------- wheel and sdist
#: what a build must not see: setuptools reuses a stale ``build/`` folder, which would hide a missing package
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "runs", "__pycache__", "*.pyc",
                                    ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout (as ``pip install .`` from a fresh clone builds it)."""
    source = tmp_path_factory.mktemp("checkout") / "daclip_lora"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    return _build_wheel(source, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed non-editable into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    return target


def test_wheel_holds_every_file_of_the_package(wheel):
    missing = sorted(set(_source_files()) - set(_wheel_files(wheel)))
    assert missing == [], f"in the source tree, not in the wheel: {missing[:10]}"


def test_wheel_built_from_the_sdist_holds_every_file(tmp_path, wheel):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_SOURCE)
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "--dist-dir", str(tmp_path)],
                         cwd=checkout, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (sdist,) = tmp_path.glob("daclip_lora-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (unpacked,) = (tmp_path / "src").iterdir()
    from_sdist = _build_wheel(unpacked, tmp_path / "wheel")
    assert _wheel_files(from_sdist) == _wheel_files(wheel)


IMPORT_ALL = """
import importlib, json, sys
target = sys.argv[1]
bad = {}
for name in json.loads(sys.argv[2]):
    try:
        module = importlib.import_module(name)
        if not module.__file__.startswith(target):
            bad[name] = "imported from " + module.__file__
    except Exception as e:
        bad[name] = f"{type(e).__name__}: {e}"
print(json.dumps(bad))
"""


def test_every_module_imports_from_the_installed_copy(installed, tmp_path):
    run = _python_s(IMPORT_ALL, installed, tmp_path, str(installed), json.dumps(_modules()), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}


CLI = "import sys; from daclip_lora.apps.cli import main; sys.exit(main(sys.argv[1:]))"


def test_installed_cli_lists_models_from_another_folder(installed, tmp_path):
    run = _python_s(CLI, installed, tmp_path, "list-models")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "daclip_ViT-B-32" in run.stdout and "daclip_tiny" in run.stdout


def test_installed_cli_runs_the_demos_first_stage_and_reads_its_images(installed, tmp_path):
    """``make-dataset builtin`` (the demo's stage 1), then ``degradation`` on what it wrote, on the shipped
    tiny DA-CLIP and restorer assets."""
    data = tmp_path / "data"
    made = _python_s(CLI, installed, tmp_path, "make-dataset", str(data), "--size", "1", "--val-size", "2",
                     "--patch-size", "48", "--distortion", "noisy", "hazy")
    assert made.returncode == 0, made.stderr[-3000:]
    image = next((data / "val" / "noisy" / "LQ").iterdir())
    probs = tmp_path / "probs.json"
    run = _python_s(CLI, installed, tmp_path, "degradation", str(image), "--json", str(probs))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(probs.read_text())
    assert report["pretrained"].startswith(str(installed)) and report["adapter"].startswith(str(installed))
    (words,) = report["images"].values()
    assert len(words) == 10 and sum(words.values()) == pytest.approx(1.0, abs=1e-4)
