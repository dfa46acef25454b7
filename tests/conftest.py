"""Shared fixtures: a click runner and tiny generated photo folders.

The photos are 24×24 and the two classes differ in colour and brightness, so that a
two-epoch model can tell them apart and predictions can be checked for being right.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A model small enough to train in a second on 24px images.
TINY_MODEL = ["--blocks", "1", "--filters", "4", "--dense", "0", "--dropout", "0"]
TINY_TRAIN = ["--epochs", "4", "--batch-size", "4", "--learning-rate", "0.01"]


def make_photo(kind: str, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A BGR photo: 'cat' photos are bright and warm, 'dog' photos dark and cold."""
    noise = rng.integers(-25, 25, size=(size, size, 3))
    base = np.array([60, 90, 210]) if kind == "cat" else np.array([150, 60, 30])  # BGR
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_photos(folder: Path, kind: str, count: int, seed: int, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{kind}_{i}.jpg" if not prefix else folder / f"{prefix}.{i}.jpg"
        assert cv2.imwrite(str(path), make_photo(kind, rng))
        paths.append(path)
    return paths


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """``tmp_path/photos/{cats,dogs}/`` with 12 photos each."""
    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", 12, seed=1)
    write_photos(root / "dogs", "dog", 12, seed=2)
    return root


@pytest.fixture
def prepared(runner: CliRunner, tiny_dataset: Path, tmp_path: Path) -> Path:
    """``tiny_dataset`` prepared at 24 px into ``tmp_path/prepared``."""
    from catsdogs.cli import cli

    out = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(out), "--size", "24"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def unseen_photos(tmp_path: Path) -> dict[str, list[Path]]:
    """Photos of each class that no model has trained on."""
    return {
        "cats": write_photos(tmp_path / "unseen", "cat", 4, seed=11),
        "dogs": write_photos(tmp_path / "unseen", "dog", 4, seed=12),
    }


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained once for the whole session: ``<tmp>/model``."""
    from catsdogs.cli import cli

    root = tmp_path_factory.mktemp("trained")
    write_photos(root / "photos" / "cats", "cat", 12, seed=1)
    write_photos(root / "photos" / "dogs", "dog", 12, seed=2)
    runner = CliRunner()
    result = runner.invoke(cli, ["prepare", str(root / "photos"), "--out", str(root / "prepared"),
                                 "--size", "24"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", "--data", str(root / "prepared"), "--out",
                                 str(root / "model"), *TINY_MODEL, *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return root / "model"
