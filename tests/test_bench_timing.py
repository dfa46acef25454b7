"""benchmarks/timing.py: the alternated rounds that epoch_profile.py times its set-ups in."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def timing():
    spec = importlib.util.spec_from_file_location("timing", ROOT / "benchmarks" / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alternated_times_every_step_once_a_round_in_turn(timing):
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = timing.alternated(steps, seconds=0.0, rounds=3)
    assert list(times) == ["a", "b", "c"]
    assert [len(values) for values in times.values()] == [3, 3, 3]
    assert all(value > 0 for values in times.values() for value in values)
    # each timing is 2 warm-up calls and at least 3 timed ones: 5 a turn with seconds=0
    assert calls == (["a"] * 5 + ["b"] * 5 + ["c"] * 5) * 3


def test_alternated_refuses_no_rounds(timing):
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        timing.alternated({"a": lambda: None}, seconds=0.0, rounds=0)
