"""The design convention's limits on package code: functions of at most 60 lines (docstring excluded) and a
cyclomatic complexity of at most 15 (McCabe, counted as radon counts it)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daclip_lora"
MAX_LINES, MAX_COMPLEXITY = 60, 15
_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler, ast.With, ast.AsyncWith,
             ast.Assert, ast.comprehension)


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _own_nodes(fn):
    """The nodes of ``fn``'s body, nested function and class bodies excluded (they count on their own)."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def complexity(fn) -> int:
    score = 1
    for node in _own_nodes(fn):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            continue  # radon does not count with-blocks
        if isinstance(node, _BRANCHES):
            score += 1 + (len(node.ifs) if isinstance(node, ast.comprehension) else 0)
        elif isinstance(node, ast.BoolOp):
            score += len(node.values) - 1
        elif isinstance(node, ast.Try):
            score += bool(node.orelse)
    return score


def code_lines(fn) -> int:
    lines = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_the_limit():
    long = [f"{p.relative_to(PACKAGE)}:{fn.lineno} {fn.name} ({code_lines(fn)} lines)" for p, fn in _functions()
            if code_lines(fn) > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_no_function_is_more_complex_than_the_limit():
    branchy = [f"{p.relative_to(PACKAGE)}:{fn.lineno} {fn.name} (complexity {complexity(fn)})"
               for p, fn in _functions() if complexity(fn) > MAX_COMPLEXITY]
    assert not branchy, f"functions over complexity {MAX_COMPLEXITY}: {branchy}"


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    return 1\n", 1),
    ("def f(a):\n    if a and a > 1:\n        return 1\n    for i in a:\n        pass\n", 4),
    ("def f(a):\n    try:\n        g()\n    except ValueError:\n        pass\n    return [x for x in a if x]\n", 4),
])
def test_complexity_counts_branches(source, expected):
    assert complexity(ast.parse(source).body[0]) == expected
