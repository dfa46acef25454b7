"""Full disks and outputs that cannot be written: one clear line, exit 1, nothing
partial left behind (no hidden folder, no lock file, no parent folder made for it), the
source and any previous output untouched.

The tiny filesystems are tmpfs mounts made by the test (root is needed; skipped otherwise).
prepare runs as a real subprocess: a memory-mapped write on a full disk would kill it with
SIGBUS, which an in-process test could not survive.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catsdogs.cli import cli
from data_prep import safeio
from data_prep.prepare import prepare
from tests.helpers import TINY_MODEL, TINY_TRAIN, write_photos
from tests.reliability_support import (
    dataset_digest,
    one_error_line,
    run_cli,
    tmpfs,
    tree_digest,
)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """200 photos: about 1.4 MB once prepared at 48 px."""
    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", 100, seed=1)
    write_photos(root / "dogs", "dog", 100, seed=2)
    return root


def test_prepare_on_a_full_disk(tmp_path, photos):
    source_digest = tree_digest(photos)
    with tmpfs(tmp_path / "tiny", "256k") as tiny:
        out = tiny / "deeper" / "prepared"
        done = run_cli("prepare", str(photos), "--out", str(out), "--size", "48")
        assert done.returncode == 1, done.returncode  # not -7 (SIGBUS)
        assert one_error_line(done.stderr) == (
            f"Error: No space left on device: {out} (nothing was written; free some space "
            "or choose another --out)"
        )
        assert os.listdir(tiny) == []  # no hidden folder, no lock file, no 'deeper/'
    assert tree_digest(photos) == source_digest


def test_prepare_over_a_dataset_on_a_full_disk_keeps_the_old_one(tmp_path, photos):
    small = tmp_path / "small"
    write_photos(small / "cats", "cat", 4, seed=5)
    write_photos(small / "dogs", "dog", 4, seed=6)
    with tmpfs(tmp_path / "tiny", "512k") as tiny:
        out = tiny / "prepared"
        prepare(small, out, 48)
        before = dataset_digest(out)
        done = run_cli("prepare", str(photos), "--out", str(out), "--size", "48", "--force")
        assert done.returncode == 1
        assert one_error_line(done.stderr).startswith(f"Error: No space left on device: {out}")
        assert dataset_digest(out) == before
        assert os.listdir(tiny) == ["prepared"]


def test_train_on_a_full_disk_is_refused_before_training(runner, tmp_path, trained_model):
    data = trained_model.parent / "prepared"
    with tmpfs(tmp_path / "tiny", "64k") as tiny:
        out = tiny / "model"
        result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(out),
                                     *TINY_MODEL, *TINY_TRAIN])
        assert result.exit_code == 1
        assert "epoch" not in result.output  # hours of training are not thrown away
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"Error: No space left on device: {out} needs about ")
        assert last.endswith("(nothing was written; free some space or choose another --out)")
        assert os.listdir(tiny) == []


def test_train_when_the_disk_fills_while_saving(runner, tmp_path, trained_model, monkeypatch):
    # The early check passes (another program fills the disk meanwhile): the save fails.
    monkeypatch.setattr(safeio, "check_free_space", lambda *args, **kwargs: None)
    data = trained_model.parent / "prepared"
    with tmpfs(tmp_path / "tiny", "16k") as tiny:
        out = tiny / "model"
        result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(out),
                                     *TINY_MODEL, "--epochs", "1"])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"Error: No space left on device: {out} (nothing was written; free some space "
            "or choose another --out)"
        )
        assert os.listdir(tiny) == []


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_output_on_a_read_only_filesystem(runner, tmp_path, photos, trained_model, command):
    data = trained_model.parent / "prepared"
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as read_only:
        out = read_only / "new" / "out"
        if command == "prepare":
            args = ["prepare", str(photos), "--out", str(out), "--size", "24"]
        else:
            args = ["train", "--data", str(data), "--out", str(out), *TINY_MODEL]
        result = runner.invoke(cli, args)
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == (
            f"Error: cannot write {out}: read-only file system"
        )
        assert os.listdir(read_only) == []


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_output_under_a_file(runner, tmp_path, photos, trained_model, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "sub" / "out"
    source_digest = tree_digest(photos)
    if command == "prepare":
        args = ["prepare", str(photos), "--out", str(out), "--size", "24"]
    else:
        args = ["train", "--data", str(trained_model.parent / "prepared"), "--out", str(out),
                *TINY_MODEL]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: cannot write {out}: {blocker} is a file, not a folder"
    )
    assert blocker.read_text() == "a file, not a folder"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "photos"]
    assert tree_digest(photos) == source_digest
