"""Helpers shared by the tests: tiny generated photos, tiny model options, and checks on
click results. Fixtures live in ``conftest.py``; plain functions and constants live here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import traceback
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

# The project's root folder: docs, benchmarks and scripts the tests read or run.
ROOT = Path(__file__).resolve().parent.parent

# A model small enough to train in a second on 24px images.
TINY_MODEL = ["--blocks", "1", "--filters", "4", "--dense", "0", "--dropout", "0"]
TINY_TRAIN = ["--epochs", "4", "--batch-size", "4", "--learning-rate", "0.01"]


def is_slow(item: pytest.Item) -> bool:
    """Whether a collected test is in the slow tier (``-m slow``)."""
    return item.get_closest_marker("slow") is not None


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` (not a package) imported as the module ``name``, registered
    in ``sys.modules`` (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_photo(kind: str, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A BGR photo: 'cat' photos are bright and warm, 'dog' photos dark and cold."""
    noise = rng.integers(-25, 25, size=(size, size, 3))
    base = np.array([60, 90, 210]) if kind == "cat" else np.array([150, 60, 30])  # BGR
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_photos(folder: Path, kind: str, count: int, seed: int, prefix: str = "") -> list[Path]:
    """``count`` JPEG photos of ``kind`` in ``folder``: ``<kind>_<i>.jpg``, or
    ``<prefix>.<i>.jpg`` when a prefix is given."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{kind}_{i}.jpg" if not prefix else folder / f"{prefix}.{i}.jpg"
        assert cv2.imwrite(str(path), make_photo(kind, rng))
        paths.append(path)
    return paths


def assert_no_escaped_exception(result: Result) -> None:
    """No exception escaped the command but ``SystemExit``, which is how click exits.

    An uncaught exception never reaches ``result.output`` (the runner keeps it in
    ``result.exception`` and sets exit code 1), so looking for "Traceback" in the output
    would prove nothing.
    """
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"the command raised instead of exiting cleanly:\n{trace}")


def assert_clean_exit(result: Result, code: int, message: str | None = None) -> None:
    """A ``CliRunner`` result ended the way the CLI means it to: no exception escaped the
    command, the exit code is ``code``, and ``message``, when given, is one whole line of
    the output (stdout and stderr together)."""
    assert_no_escaped_exception(result)
    assert result.exit_code == code, f"exit code {result.exit_code}, not {code}:\n{result.output}"
    if message is not None:
        lines = [line.rstrip() for line in result.output.splitlines()]
        assert message in lines, f"no line {message!r} in the output:\n{result.output}"


class CleanExitRunner(CliRunner):
    """A ``CliRunner`` whose every ``invoke`` fails the test when an exception other than
    ``SystemExit`` escaped the command: the CLI turns every error into one line and an exit
    code, so a traceback is a bug whatever the exit code the test then expects."""

    def invoke(self, *args, **kwargs) -> Result:  # type: ignore[override]
        result = super().invoke(*args, **kwargs)
        assert_no_escaped_exception(result)
        return result


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding the write lock of ``out`` (as a running command does), once
    it has the lock. The caller kills it."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from pathlib import Path; from data_prep.safeio import output_lock\n"
         f"with output_lock(Path({str(out)!r})):\n"
         "    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    if holder.stdout.readline().strip() != "locked":
        holder.kill()
        holder.communicate()  # and closes its pipe
        raise AssertionError(f"the lock holder of {out} did not get the lock")
    return holder
