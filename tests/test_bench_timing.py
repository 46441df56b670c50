"""The benchmarks' timing helpers (bench/_timing.py): interleaving order, medians and per-round ratios."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _timing  # noqa: E402


def test_interleaved_runs_one_warmup_each_then_rounds_in_turn():
    calls = []
    times = _timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3]


def test_interleaved_syncs_around_every_timed_call():
    events = []
    _timing.interleaved({"a": lambda: events.append("call")}, repeats=2, sync=lambda: events.append("sync"),
                        warmup=False)
    assert events == ["sync", "call", "sync"] * 2


@pytest.mark.parametrize("num, den, expected", [
    ([2.0, 4.0, 9.0], [1.0, 2.0, 3.0], "2.00x (2.00-3.00)"),
    ([1.0], [4.0], "0.25x (0.25-0.25)"),
])
def test_ratio_is_taken_per_round(num, den, expected):
    assert _timing.fmt_ratio(num, den) == expected


def test_ratio_of_unequal_rounds_is_refused():
    with pytest.raises(ValueError, match="as many rounds"):
        _timing.ratios([1.0, 2.0], [1.0])


@pytest.mark.parametrize("values, kwargs, expected", [
    ([3.0, 1.0, 2.0], {}, "2.000 (1.000-3.000)"),
    ([0.5, 0.25], {"scale": 1e3, "digits": 0}, "375 (250-500)"),
])
def test_fmt_gives_median_and_range(values, kwargs, expected):
    assert _timing.fmt(values, **kwargs) == expected
