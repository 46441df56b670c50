"""The README and docs/ pages: every relative link, anchor, file path and dotted module name they mention exists."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^(?:daclip_lora|bench|tests|options|docs)/[\w./*-]*$")
DOTTED = re.compile(r"^daclip_lora(?:\.\w+)+$")


def _ids(p):
    return str(p.relative_to(ROOT))


def _anchors(page: Path):
    """GitHub's heading slugs of a page."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_relative_links_and_anchors_exist(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"\w+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{_ids(page)} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{_ids(page)} links to #{anchor}, not a heading of {_ids(dest)}"


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_code_paths_exist(page):
    for code in CODE.findall(page.read_text()):
        code = code.split(":")[0].split(" ")[0].rstrip(".,")
        if PATH.match(code):
            pattern = code.rstrip("/")
            assert any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists(), \
                f"{_ids(page)} names {code}, which does not exist"


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_dotted_names_resolve(page):
    for code in CODE.findall(page.read_text()):
        name = re.split(r"[(\s\[]", code)[0]
        if DOTTED.match(name):
            try:
                _resolve(name)
            except (ImportError, AttributeError) as e:
                pytest.fail(f"{_ids(page)} names {name}, which does not resolve ({e})")
