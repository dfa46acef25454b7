"""The one timing loop of the micro-benchmarks (``epoch_profile.py``, ``first_conv.py``);
it imports nothing heavy, so a script that times bare TensorFlow stays free of Keras."""

from __future__ import annotations

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
