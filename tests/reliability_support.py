"""Helpers shared by the reliability tests: run the real CLI in a subprocess, fingerprint
folders, mount tiny filesystems."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HIDDEN_SIBLING = re.compile(r"^\..+\.(tmp|old)-\d+-[0-9a-f]{8}$")
DATASET_FILES = ("dataset.json", "manifest.csv", "skipped.csv", "images.npy")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CATSDOGS_FAILPOINT", None)
    env.pop("CATSDOGS_NO_RENAME_EXCHANGE", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def start_cli(*args: str, **env: str) -> subprocess.Popen:
    """``python -m catsdogs ARGS`` as a real child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "catsdogs", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(**env),
    )


def run_cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "catsdogs", *args],
        capture_output=True, text=True, env=cli_env(**env), timeout=timeout,
    )


def hidden_siblings(folder: Path) -> list[str]:
    """Hidden temporary/aside folders and lock files catsdogs may leave in ``folder``."""
    return sorted(
        name for name in os.listdir(folder)
        if HIDDEN_SIBLING.match(name) or (name.startswith(".") and name.endswith(".lock"))
    )


def tree_digest(root: Path) -> str:
    """Names, sizes, mtimes and bytes of every file under ``root``: did anything change?"""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest.update(f"{path.relative_to(root)}|{stat.st_mode}|{stat.st_mtime_ns}\n".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def dataset_digest(folder: Path) -> tuple[str, ...]:
    """The bytes of each file of a prepared dataset (to compare with a reference)."""
    return tuple(hashlib.sha256((folder / name).read_bytes()).hexdigest()
                 for name in DATASET_FILES)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll ``predicate`` every millisecond until it is true (True) or ``process`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return predicate()
        time.sleep(0.001)
    raise TimeoutError("the child process neither got there nor ended")


def one_error_line(stderr: str) -> str:
    """The single line a failing command printed on stderr (asserting there is only one)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``mountpoint`` for the ``with`` body; skips the test where it cannot
    be mounted (not root, no permission, not Linux)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
