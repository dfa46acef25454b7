"""Shared fixtures: a click runner, tiny generated photo folders, a tiny trained model.

Only fixtures live here; plain functions and constants are in ``tests/helpers.py``. The photos
are 24×24 and the two classes differ in colour and brightness, so that a two-epoch model can
tell them apart and predictions can be checked for being right.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import TINY_MODEL, TINY_TRAIN, CleanExitRunner, is_slow, write_photos

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAINED_MODEL_FIXTURES = {"trained_model", "three_class_model"}
"""Fixtures that train a real model: every test that uses one, directly or through another
fixture, is marked slow, so that the quick tier (``-m "not slow"``) trains nothing."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that train a model slow, then runs the slow tests first (each group
    in file order): the two workers then end on quick tests and finish together, where file
    order left one worker alone on the backbone trainings for the last minute or so
    (benchmarks/RESULTS.md, "The test suite")."""
    for item in items:
        if TRAINED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: not is_slow(item))


@pytest.fixture
def runner() -> CliRunner:
    """A click runner that fails the test if any exception but ``SystemExit`` escapes."""
    return CleanExitRunner()


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
    runner = CleanExitRunner()
    result = runner.invoke(cli, ["prepare", str(root / "photos"), "--out", str(root / "prepared"),
                                 "--size", "24"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", "--data", str(root / "prepared"), "--out",
                                 str(root / "model"), *TINY_MODEL, *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return root / "model"
