"""The package's layers: every import of daclip_lora code points down (or stays inside its own subpackage)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daclip_lora"
#: bottom to top; a module may import its own layer and the ones before it
LAYERS = ("_utils", "clip", "data", "metrics", "restoration", "training", "tiny", "apps")
#: modules that import nothing of daclip_lora at all
LEAVES = ("_utils", "restoration/tiling.py", "tiny/locate.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(path: Path):
    """The absolute daclip_lora modules that ``path`` imports (lazy imports inside functions included)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("daclip_lora"):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("daclip_lora"))


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_is_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layered subpackages: {loose}"
    assert all(_layer(_module_name(p)) is not None for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    mine = _layer(_module_name(path))
    for target in _targets(path):
        theirs = _layer(target)
        assert target != "daclip_lora", f"{path.relative_to(PACKAGE)} imports the top-level package"
        assert theirs is not None and theirs <= mine, \
            f"{path.relative_to(PACKAGE)} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs] if theirs else '?'})"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_the_package(leaf):
    root = PACKAGE / leaf
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    own = "daclip_lora." + leaf + "." if root.is_dir() else None  # a leaf folder may import itself
    for path in paths:
        outside = [t for t in _targets(path) if not (own and t.startswith(own))]
        assert not outside, f"{path.relative_to(PACKAGE)} imports {outside}"
