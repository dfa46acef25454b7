"""The timing loops of the micro-benchmarks (``epoch_profile.py``, ``first_conv.py``,
``augment_cost.py``) and what they share: the ``--rounds`` option and the median-and-range
report. They import nothing heavy, so a script that times bare TensorFlow stays free of
Keras."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def timed(step: Callable[[], object], seconds: float, warmup: int = 2) -> float:
    """Seconds per call of ``step``: ``warmup`` calls first, then calls for about
    ``seconds`` (at least three)."""
    for _ in range(warmup):
        step()
    count, started = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and count >= 3:
            return elapsed / count


def alternated(steps: dict[str, Callable[[], object]], seconds: float, rounds: int
               ) -> dict[str, list[float]]:
    """Seconds per call of each of ``steps``, once per round for ``rounds`` rounds, the steps
    timed in turn within each round (``timed``, ``seconds`` each). On a host whose speed
    drifts, a slow spell then slows one round of every step rather than all of one step's."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step, seconds))
    return times


def rounds_option(text: str) -> int:
    """``--rounds``' argparse type: a whole number of at least 1, or argparse's one-line
    usage error (``alternated`` needs a round to time anything)."""
    try:
        rounds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of rounds: {text!r}") from None
    if rounds < 1:
        raise argparse.ArgumentTypeError(f"at least 1 round, got {rounds}")
    return rounds


def median_and_range(values: list[float], form: str = "{:.0f}") -> str:
    """The median of ``values`` formatted with ``form``, with their range when there are
    several: ``"96 (93–101)"``."""
    middle = form.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({form.format(min(values))}–{form.format(max(values))})"
