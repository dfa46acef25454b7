"""The one output-folder protocol (safeio.output_folder), the atomic small-file writer, the
failpoints, and the plots' small helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.config import ModelConfig, TrainConfig
from data_prep import failpoints, safeio
from tests.helpers import hold_lock
from tests.reliability_support import hidden_siblings, run_cli, start_cli

TINY = dict(blocks=1, filters=4, dense=(), dropout_rate=0.0)


def command_for(kind: str, model: Path, photos: Path, out: Path) -> list[str]:
    if kind == "evaluate":
        return ["evaluate", str(photos), "--model", str(model), "--out", str(out)]
    photo = next((photos / "cats").iterdir())
    return ["visualize", str(photo), "--model", str(model), "--out", str(out)]


@pytest.fixture
def sorted_photos(tmp_path: Path, unseen_photos) -> Path:
    """The unseen photos in class folders, as evaluate reads them."""
    root = tmp_path / "sorted"
    for name, paths in unseen_photos.items():
        (root / name).mkdir(parents=True)
        for path in paths:
            os.link(path, root / name / path.name)
    return root


@pytest.mark.parametrize("kind", ["evaluate", "visualize"])
def test_a_second_writer_of_the_same_out_is_refused_naming_the_first(
    kind, runner, trained_model, sorted_photos, tmp_path
):
    out = tmp_path / "report"
    command = command_for(kind, trained_model, sorted_photos, out)
    holder = hold_lock(out)
    try:
        result = runner.invoke(cli, command)
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)
        assert result.output == (
            f"Error: {out} is being written by another catsdogs process (pid {holder.pid}); "
            "wait for it to finish or choose another --out\n"
        )
        assert not out.exists()
    finally:
        holder.kill()
        holder.communicate()  # and closes its pipe
    result = runner.invoke(cli, command)  # the first one gone: this run completes
    assert result.exit_code == 0, result.output
    assert out.is_dir() and hidden_siblings(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["evaluate", "visualize"])
def test_two_real_runs_at_once_one_finishes_and_the_other_is_refused_or_waits_its_turn(
    kind, trained_model, sorted_photos, tmp_path
):
    out = tmp_path / "report"
    command = [*command_for(kind, trained_model, sorted_photos, out), "--force"]
    first, second = start_cli(*command), start_cli(*command)
    outcomes = []
    for child, other in ((first, second), (second, first)):
        _, stderr = child.communicate(timeout=300)
        if child.returncode == 0:
            outcomes.append("ok")
        else:
            assert child.returncode == 1, stderr
            assert stderr.strip().splitlines() == [
                f"Error: {out} is being written by another catsdogs process "
                f"(pid {other.pid}); wait for it to finish or choose another --out"
            ]
            outcomes.append("refused")
    assert "ok" in outcomes  # never both refused
    assert out.is_dir() and hidden_siblings(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["evaluate", "visualize"])
@pytest.mark.parametrize("moment", [failpoints.BUILDING, failpoints.PUBLISH_BEFORE])
def test_a_killed_run_leaves_nothing_the_next_run_trips_over(
    kind, moment, trained_model, sorted_photos, tmp_path
):
    out = tmp_path / "report"
    command = command_for(kind, trained_model, sorted_photos, out)
    killed = run_cli(*command, CATSDOGS_FAILPOINT=moment)
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()  # nothing published...
    assert hidden_siblings(tmp_path)  # ...but a hidden folder left behind
    done = run_cli(*command)  # no --force needed: nothing of the killed run is in the way
    assert done.returncode == 0, done.stderr
    assert hidden_siblings(tmp_path) == []


@pytest.mark.slow
def test_a_run_killed_after_swapping_in_its_output_leaves_that_output(
    trained_model, sorted_photos, tmp_path
):
    out = tmp_path / "report"
    command = [*command_for("evaluate", trained_model, sorted_photos, out), "--force"]
    assert run_cli(*command).returncode == 0
    killed = run_cli(*command, CATSDOGS_FAILPOINT=failpoints.PUBLISH_SWAPPED)
    assert killed.returncode == -9
    assert json.loads((out / "metrics.json").read_text())["format"] == "catsdogs-evaluation/2"
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    assert hidden_siblings(tmp_path) == []


# --- the protocol itself ------------------------------------------------------------------

def is_ours(folder: Path) -> bool:
    return (folder / "ours.txt").is_file()


def test_output_folder_publishes_on_success_and_removes_everything_on_failure(tmp_path):
    out = tmp_path / "out"
    with safeio.output_folder(out, kind="report", force=False, is_ours=is_ours) as build:
        assert build.path.parent == tmp_path and build.path.name.startswith(".out.tmp-")
        (build.path / "ours.txt").write_text("1")
    assert (out / "ours.txt").read_text() == "1"
    with pytest.raises(ValueError, match="already holds a report; use --force"):
        with safeio.output_folder(out, kind="report", force=False, is_ours=is_ours):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with safeio.output_folder(out, kind="report", force=True, is_ours=is_ours) as build:
            (build.path / "ours.txt").write_text("2")
            raise RuntimeError("boom")
    assert (out / "ours.txt").read_text() == "1"
    with safeio.output_folder(out, kind="report", force=True, is_ours=is_ours) as build:
        (build.path / "ours.txt").write_text("3")
        build.discard()
    assert (out / "ours.txt").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_output_folder_refuses_a_foreign_folder_and_an_out_inside_the_source(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and is not a catsdogs report"):
        with safeio.output_folder(foreign, kind="report", force=True, is_ours=is_ours):
            pass
    with pytest.raises(ValueError, match="is inside the source folder"):
        with safeio.output_folder(foreign / "out", kind="report", force=False,
                                  is_ours=is_ours, not_inside=foreign):
            pass
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["foreign"]


def test_output_folder_runs_the_callers_check_under_the_lock(tmp_path):
    out = tmp_path / "out"

    def check() -> str:
        with pytest.raises(safeio.OutputBusyError):  # we hold it already
            with safeio.output_lock(out):
                pass
        return "checked"

    with safeio.output_folder(out, kind="report", force=False, is_ours=is_ours,
                              check=check) as build:
        assert build.checked == "checked"


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "state.json"
    safeio.write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def fail(handle) -> None:
        handle.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        safeio.write_atomic(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_atomic_flushes_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(handle: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{handle}"))
        real(handle)

    monkeypatch.setattr(os, "fsync", spy)
    safeio.write_text_atomic(tmp_path / "model.json", "{}\n")
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".model.json.tmp-"))  # the file, before rename
    assert synced[1] == str(tmp_path)  # then the folder that holds the new name


# --- failpoints ---------------------------------------------------------------------------

def test_an_unknown_failpoint_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown failpoint 'publish:nowhere'"):
        failpoints.failpoint("publish:nowhere")
    monkeypatch.setenv("CATSDOGS_FAILPOINT", "publish:befor")
    with pytest.raises(ValueError, match="CATSDOGS_FAILPOINT='publish:befor' is not a failpoint"):
        failpoints.failpoint(failpoints.PUBLISH_BEFORE)
    monkeypatch.setenv("CATSDOGS_FAILPOINT", failpoints.PUBLISH_SWAPPED)
    failpoints.failpoint(failpoints.PUBLISH_BEFORE)  # another point: nothing happens


def test_the_rename_exchange_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("CATSDOGS_NO_RENAME_EXCHANGE", raising=False)
    assert not failpoints.rename_exchange_disabled()
    monkeypatch.setenv("CATSDOGS_NO_RENAME_EXCHANGE", "1")
    assert failpoints.rename_exchange_disabled()
    assert safeio.exchange(Path("/nonexistent/a"), Path("/nonexistent/b")) is False


# --- checkpoints ----------------------------------------------------------------------------

class Crash(BaseException):
    """A crash at a failpoint, without killing the test process."""


@pytest.mark.slow
def test_a_crash_between_the_weights_and_state_json_leaves_a_resumable_checkpoint(
    prepared, tmp_path, monkeypatch
):
    from catsdogs.train import checkpoint_folder, read_checkpoint, train

    out = tmp_path / "model"
    written: list[str] = []
    real_write = safeio.write_atomic

    def recording_write(path: Path, write) -> None:
        written.append(path.name)
        real_write(path, write)

    hits = 0

    def crash_at_second_epoch(name: str) -> None:
        nonlocal hits
        if name == failpoints.CHECKPOINT_WEIGHTS:
            hits += 1
            if hits == 2:
                raise Crash

    monkeypatch.setattr(safeio, "write_atomic", recording_write)
    monkeypatch.setattr(failpoints, "failpoint", crash_at_second_epoch)
    model_config = ModelConfig(**TINY)
    config = TrainConfig(epochs=3, batch_size=4, learning_rate=0.01, augment=False, seed=7,
                         keep="best")  # the best epoch's weights are a second file
    with pytest.raises(Crash):
        train(prepared, out, model_config, config)
    assert model_config == ModelConfig(**TINY)  # the caller's config is not changed
    # Every checkpoint file went through the atomic writer, the weights before state.json.
    assert written[:3] == ["training-00001.npz", "kept-00001.npz", "state.json"]
    assert written[3:] == ["training-00002.npz", "kept-00002.npz"] or \
        written[3:] == ["training-00002.npz"]
    partial = checkpoint_folder(out)
    state = read_checkpoint(partial)
    assert state["epochs_done"] == 1
    with np.load(partial / state["weights"]) as stored:
        assert len(stored.files) > 0
    assert not out.exists() and hidden_siblings(tmp_path) == []

    monkeypatch.undo()
    result = train(prepared, out, ModelConfig(**TINY), config, resume=True)
    assert result.resumed_from == 1 and result.epochs_run == 3 and result.saved
    assert not partial.exists()


# --- smaller things -------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["reduce_per_replica", "TensorFlowTrainer"])
def test_the_multi_worker_patch_refuses_a_keras_without_the_functions_it_replaces(
    missing, monkeypatch
):
    pytest.importorskip("tensorflow")
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from catsdogs import distribute

    monkeypatch.delattr(tf_trainer, missing)
    with pytest.raises(ValueError) as error:
        distribute.patch_keras_for_multi_worker()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("multi-worker training needs a fix to Keras' TensorFlow trainer")


def test_curves_have_whole_number_epoch_ticks():
    from catsdogs.plots import curves_figure, pyplot

    rows = [{"epoch": e, "loss": 1 / e, "val_loss": 1.1 / e, "accuracy": 0.5, "val_accuracy":
             0.6, "best": e == 2} for e in (1, 2, 3)]
    figure = curves_figure(rows)
    try:
        for axes in figure.axes:
            ticks = axes.xaxis.get_major_locator().tick_values(1, 3)
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    finally:
        pyplot().close(figure)


def test_long_file_names_are_shortened_with_an_ellipsis():
    from catsdogs.plots import shortened

    name = "0123456789abcdef0123456789abcdef.jpg"
    short = shortened(name, 20)
    assert len(short) == 20 and "…" in short
    assert short.startswith("0123456789abc") and short.endswith("ef.jpg")
    assert shortened("cat.1.jpg", 20) == "cat.1.jpg"


def test_the_prediction_path_imports_no_training_code():
    code = ("import sys, catsdogs.predict, catsdogs.model_folder, catsdogs.export\n"
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = set(done.stdout.split())
    training = {"catsdogs.train", "catsdogs.model", "catsdogs.data", "catsdogs.distribute",
                "catsdogs.config", "keras", "tensorflow"}
    assert "catsdogs.model_folder" in loaded
    assert loaded & training == set()
