"""Two writers of one --out, and the repair of what killed writers leave behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catsdogs.cli import cli
from data_prep import safeio
from data_prep.prepare import prepare
from data_prep.store import read_dataset
from tests.helpers import TINY_MODEL, hold_lock, make_photo, write_photos
from tests.reliability_support import (
    dataset_digest,
    hidden_siblings,
    one_error_line,
    run_cli,
    start_cli,
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    write_photos(first / "cats", "cat", 6, seed=1)
    write_photos(first / "dogs", "dog", 6, seed=2)
    write_photos(second / "cats", "cat", 60, seed=3)
    write_photos(second / "dogs", "dog", 60, seed=4)
    return first, second


def test_prepare_refused_while_another_writer_holds_the_lock(tmp_path, two_sources):
    first, _ = two_sources
    out = tmp_path / "work" / "prepared"
    with safeio.output_lock(out):
        assert (out.parent / ".prepared.lock").read_text().strip() == str(os.getpid())
        done = run_cli("prepare", str(first), "--out", str(out), "--size", "24")
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert line == (f"Error: {out} is being written by another catsdogs process "
                        f"(pid {os.getpid()}); wait for it to finish or choose another --out")
        assert not out.exists()
    # The lock is gone with its holder, and the parent folder it created too.
    assert not (tmp_path / "work").exists()
    prepare(first, out, 24)
    assert hidden_siblings(out.parent) == []


def test_train_refused_while_another_writer_holds_the_lock(runner, trained_model, tmp_path):
    model = tmp_path / "model"
    import shutil

    shutil.copytree(trained_model, model)
    before = {name.name: name.read_bytes() for name in model.iterdir()}
    with safeio.output_lock(model):
        result = runner.invoke(cli, ["train", "--data", str(trained_model.parent / "prepared"),
                                     "--out", str(model), "--force", *TINY_MODEL])
    assert result.exit_code == 1
    assert "is being written by another catsdogs process" in result.output
    assert "Model:" not in result.output  # refused before building anything
    assert {name.name: name.read_bytes() for name in model.iterdir()} == before
    assert hidden_siblings(tmp_path) == []


@pytest.mark.slow
def test_two_prepares_at_once_never_corrupt_each_other(tmp_path, two_sources):
    first, second = two_sources
    references = {}
    for source in (first, second):
        prepare(source, tmp_path / f"ref-{source.name}", 24)
        references[dataset_digest(tmp_path / f"ref-{source.name}")] = source.name
    out = tmp_path / "prepared"
    outcomes = []
    for _ in range(3):
        children = [start_cli("prepare", str(source), "--out", str(out), "--size", "24",
                              "--force") for source in (second, first)]
        for child in children:
            _, stderr = child.communicate(timeout=120)
            if child.returncode == 0:
                outcomes.append("ok")
            else:
                assert child.returncode == 1, stderr
                assert "is being written by another catsdogs process" in one_error_line(stderr)
                outcomes.append("refused")
        # Whatever the interleaving: one complete dataset, exactly one of the two.
        read_dataset(out)
        assert dataset_digest(out) in references
        assert hidden_siblings(tmp_path) == []
    assert outcomes.count("ok") >= 3


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    out = tmp_path / "prepared"
    holder = hold_lock(out)
    try:
        with pytest.raises(safeio.OutputBusyError, match=f"pid {holder.pid}"):
            with safeio.output_lock(out):
                pass
    finally:
        holder.kill()
        holder.communicate()  # and closes its pipe
    with safeio.output_lock(out):  # SIGKILL released it: no stale lock
        pass
    assert os.listdir(tmp_path) == []


def test_refused_in_the_instant_before_the_holder_wrote_its_pid_still_names_it(tmp_path):
    """The holder takes the lock, then writes its pid: a writer refused in between waits a
    moment for the pid rather than leave it out of the message (a race CI once hit)."""
    out = tmp_path / "prepared"
    lock = safeio.lock_path(out)
    script = (
        "import fcntl, os, sys, time\n"
        f"handle = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(0.2)\n"
        "os.write(handle, f'{os.getpid()}\\n'.encode()); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(safeio.OutputBusyError) as refused:
            with safeio.output_lock(out):
                pass
        assert str(refused.value) == (
            f"{out} is being written by another catsdogs process (pid {holder.pid}); "
            "wait for it to finish or choose another --out"
        )
    finally:
        holder.kill()
        holder.communicate()  # and closes its pipe


def test_atomic_exchange_swaps_two_folders(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "name").write_text("a")
    (second / "name").write_text("b")
    if not safeio.exchange(first, second):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (first / "name").read_text() == "b" and (second / "name").read_text() == "a"


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_replaces_a_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setenv("CATSDOGS_NO_RENAME_EXCHANGE", "1")
    out, tmp = tmp_path / "out", tmp_path / ".out.tmp-1-00000000"
    out.mkdir()
    (out / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    safeio.publish_folder(tmp, out)
    assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]


def test_recovery_restores_a_folder_left_aside_and_removes_leftovers(tmp_path):
    out = tmp_path / "prepared"
    pid = dead_pid()
    aside = tmp_path / f".prepared.old-{pid}-0123abcd"
    aside.mkdir()
    (aside / "dataset.json").write_text("{}")
    half_built = tmp_path / f".prepared.tmp-{pid}-89abcdef"
    half_built.mkdir()
    (half_built / "images.npy").write_bytes(b"partial")
    alive = tmp_path / f".prepared.tmp-{os.getppid()}-00000000"  # a live writer's: kept
    alive.mkdir()
    other = tmp_path / f".other.tmp-{pid}-00000000"  # another output's: not ours to touch
    other.mkdir()
    actions = safeio.recover_output(out)
    assert actions == [f"restored {out} from {aside.name}", f"removed {half_built.name}"]
    assert (out / "dataset.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == sorted(["prepared", alive.name, other.name])


def test_reader_restores_a_dataset_left_aside(tmp_path, two_sources):
    first, _ = two_sources
    out = tmp_path / "prepared"
    prepare(first, out, 24)
    expected = dataset_digest(out)
    os.rename(out, tmp_path / f".prepared.old-{dead_pid()}-0123abcd")
    dataset = read_dataset(out)  # what train does first
    assert dataset_digest(out) == expected and len(dataset.images) == 12
    assert hidden_siblings(tmp_path) == []


def test_reader_restores_a_model_left_aside(tmp_path, trained_model):
    import shutil

    from catsdogs.model_folder import read_model_info

    model = tmp_path / "model"
    shutil.copytree(trained_model, tmp_path / f".model.old-{dead_pid()}-0123abcd")
    info = read_model_info(model)
    assert info.classes == ["cats", "dogs"]
    assert json.loads((model / "model.json").read_text())["image_size"] == 24


def test_write_errors_about_inputs_keep_their_own_message(tmp_path):
    out = tmp_path / "out" / "prepared"
    source_error = PermissionError(13, "Permission denied", str(tmp_path / "photos" / "a.jpg"))
    assert safeio.describe_write_error(source_error, out) is None
    output_error = PermissionError(13, "Permission denied", str(out.parent / ".prepared.lock"))
    assert str(safeio.describe_write_error(output_error, out)) == (
        f"cannot write {out}: permission denied"
    )


def test_out_inside_the_source_is_refused_before_anything_is_written_there(tmp_path,
                                                                           two_sources):
    from tests.reliability_support import tree_digest

    first, _ = two_sources
    before = tree_digest(first)
    for out in (first / "prepared", first / "new" / "deeper" / "prepared"):
        with pytest.raises(ValueError, match="is inside the source folder"):
            prepare(first, out, 24)
    assert tree_digest(first) == before  # not even a lock file or a parent folder


def test_out_that_is_or_holds_the_current_folder_is_refused(tmp_path, two_sources,
                                                            monkeypatch):
    first, _ = two_sources
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "..", str(here)):
        with pytest.raises(ValueError, match="is the current folder or holds it"):
            prepare(first, out, 24)
    assert os.listdir(here) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_commands_work_with_stderr_closed(tmp_path, trained_model, workers):
    """``catsdogs ... 2>&-`` (cron jobs, some service managers): the closed file descriptor
    2 gets the null device, so no file opened later takes its number and libjpeg's warning
    for a noisy photo cannot land inside the dataset or its lock file."""
    photos = tmp_path / "photos"
    write_photos(photos / "cats", "cat", 6, seed=1)
    write_photos(photos / "dogs", "dog", 6, seed=2)
    import cv2
    import numpy as np

    good = cv2.imencode(".jpg", make_photo("cat", np.random.default_rng(3), size=64))[1].tobytes()
    middle = len(good) // 2  # a stray marker inside the scan: decodes, with a libjpeg warning
    (photos / "cats" / "noisy.jpg").write_bytes(good[:middle] + b"\xff\xd3" + good[middle:])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "catsdogs", *args], capture_output=False,
                              stdout=subprocess.PIPE, text=True, timeout=120,
                              preexec_fn=lambda: os.close(2))

    out = tmp_path / "prepared"
    done = run("prepare", str(photos), "--out", str(out), "--size", "24", "--workers", workers)
    assert done.returncode == 0 and "Prepared 13 photos" in done.stdout
    reference = prepare(photos, tmp_path / "reference", size=24, workers=1)
    assert sum(reference.counts.values()) == 13
    assert (out / "images.npy").read_bytes() == (tmp_path / "reference" / "images.npy"
                                                 ).read_bytes()
    done = run("predict", str(photos / "dogs"), "--model", str(trained_model))
    assert done.returncode == 0 and done.stdout.count(": dogs (") == 6


@pytest.mark.slow
def test_outputs_with_names_near_the_length_limit(tmp_path, runner, two_sources):
    """A 250-byte --out name is legal (the limit is 255), but ``.<name>.tmp-<pid>-<hex>``
    would not be: hidden siblings then carry a shortened, hashed form of the name."""
    first, _ = two_sources
    out = tmp_path / ("d" * 250)
    for extra in ([], ["--force", "--size", "16"]):  # a second run replaces the first
        result = runner.invoke(cli, ["prepare", str(first), "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    assert read_dataset(out).image_size == 16
    model = tmp_path / ("m" * 250)
    result = runner.invoke(cli, ["train", "--data", str(out), "--out", str(model),
                                 *TINY_MODEL, "--epochs", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (model / "model.keras").is_file()
    assert hidden_siblings(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["d" * 250, "m" * 250, "first", "second"])
    # two long names that share their first 200 bytes do not share a lock
    twin = tmp_path / ("d" * 249 + "e")
    assert safeio.lock_path(twin) != safeio.lock_path(out)
    assert all(len(os.fsencode(safeio.temporary_sibling(p).name)) <= 255
               for p in (out, twin, model))
