"""benchmarks/timing.py: the alternated rounds that epoch_profile.py times its set-ups in."""

from __future__ import annotations

import argparse

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def timing():
    return load_benchmark("timing")


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


@pytest.mark.parametrize("text, rounds", [("1", 1), ("3", 3), (" 12 ", 12)])
def test_rounds_option_takes_whole_numbers_from_one(timing, text, rounds):
    assert timing.rounds_option(text) == rounds


@pytest.mark.parametrize("text, message", [
    ("0", "at least 1 round, got 0"),
    ("-2", "at least 1 round, got -2"),
    ("two", "a whole number of rounds: 'two'"),
    ("1.5", "a whole number of rounds: '1.5'"),
])
def test_rounds_option_refuses_what_times_nothing(timing, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        timing.rounds_option(text)
    assert str(caught.value) == message


def test_rounds_option_is_a_usage_error_not_a_traceback(timing, capsys):
    parser = argparse.ArgumentParser(prog="epoch_profile.py")
    parser.add_argument("--rounds", type=timing.rounds_option, default=2)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--rounds", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "epoch_profile.py: error: argument --rounds: at least 1 round, got 0")


def test_median_and_range(timing):
    assert timing.median_and_range([101.0, 93.0, 96.0]) == "96 (93–101)"
    assert timing.median_and_range([1.0, 4.0]) == "2 (1–4)"  # 2.5 rounds to even
    assert timing.median_and_range([0.5]) == "0"
    assert timing.median_and_range([0.25, 0.5], "{:.2f}×") == "0.38× (0.25×–0.50×)"
