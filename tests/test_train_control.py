"""Training control: interruption and resume, early stopping, determinism, reports."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from catsdogs.backend import keras as import_keras
from catsdogs.cli import cli
from catsdogs.config import DEFAULT_TIME_LIMIT, ModelConfig, TrainConfig
from catsdogs.train import checkpoint_folder, read_checkpoint, train
from tests.helpers import assert_clean_exit

keras = import_keras()

# The tiny model of helpers.TINY_MODEL, as configs: no augmentation and no dropout, so that
# two runs can be compared number for number.
TINY = dict(blocks=1, filters=4, dense=(), dropout_rate=0.0)


def tiny_train(**changes) -> TrainConfig:
    settings = dict(epochs=4, batch_size=4, learning_rate=0.01, augment=False, seed=7)
    settings.update(changes)
    return TrainConfig(**settings)


class InterruptAfter(keras.callbacks.Callback):
    """Raise KeyboardInterrupt (what Ctrl-C does) at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


class RecordStart(keras.callbacks.Callback):
    """Record the optimizer's step count when training (re)starts."""

    def __init__(self) -> None:
        super().__init__()
        self.iterations: list[int] = []

    def on_train_begin(self, logs=None):
        self.iterations.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))


@pytest.mark.slow
def test_interrupted_run_saves_best_so_far_and_resume_continues(prepared, tmp_path):
    out = tmp_path / "model"
    result = train(prepared, out, ModelConfig(**TINY), tiny_train(), callbacks=[InterruptAfter(2)])
    assert result.interrupted and result.saved and result.epochs_run == 2
    # --out holds a complete, loadable model of the best epoch so far ...
    info = json.loads((out / "model.json").read_text())
    assert info["interrupted"] is True and info["best_epoch"] in (1, 2)
    assert keras.saving.load_model(out / "model.keras").output_shape == (None, 1)
    # ... and the checkpoint lives beside it, never inside it.
    partial = checkpoint_folder(out)
    assert partial == tmp_path / ".model.partial" and result.checkpoint == partial
    assert not any(p.name.startswith(".") or "partial" in p.name for p in out.iterdir())
    state = read_checkpoint(partial)
    assert state["epochs_done"] == 2
    assert [row["epoch"] for row in state["keeper"]["rows"]] == [1, 2]  # history survives

    # A new run does not silently discard the interrupted one.
    with pytest.raises(ValueError, match="--resume"):
        train(prepared, out, ModelConfig(**TINY), tiny_train())

    recorder = RecordStart()
    # The configs passed in are ignored on resume: the checkpoint's are used.
    resumed = train(prepared, out, ModelConfig(blocks=2), TrainConfig(epochs=99), resume=True,
                    callbacks=[recorder])
    assert not resumed.interrupted and resumed.resumed_from == 2
    assert resumed.epochs_run == 4
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    # The optimizer resumed at its step count (so the schedule at its position).
    steps_per_epoch = int(np.ceil(resumed.num_train / 4))
    assert recorder.iterations == [2 * steps_per_epoch]
    assert not partial.exists()
    info = json.loads((out / "model.json").read_text())
    assert info["interrupted"] is False and info["training"]["epochs"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{"ema": 0.9}, {"augment": "crop"},
                                     {"precision": "bfloat16"}])
def test_resumed_run_matches_an_uninterrupted_one(prepared, tmp_path, changes):
    """Weights, optimizer state (the weights' moving average included), schedule position,
    data order and the pipeline's augmentation all carry over: without dropout, the resumed
    epochs give the same metrics (to float rounding)."""
    whole = train(prepared, tmp_path / "whole", ModelConfig(**TINY), tiny_train(**changes))
    train(prepared, tmp_path / "split", ModelConfig(**TINY), tiny_train(**changes),
          callbacks=[InterruptAfter(2)])
    resumed = train(prepared, tmp_path / "split", ModelConfig(**TINY), tiny_train(**changes),
                    resume=True)
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["epoch"] == b["epoch"]
        for key in ("loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a, b)


def test_resume_without_checkpoint_is_an_error(runner, prepared, tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out), "--resume"])
    assert_clean_exit(result, 1, f"Error: no interrupted run to resume: "
                                 f"{checkpoint_folder(out)} holds no checkpoint")


@pytest.mark.slow
def test_same_seed_same_validation_accuracy(prepared, tmp_path):
    """CPU, same seed, same data, augmentation on: identical validation accuracy, and
    validation loss equal to 1e-5."""
    config = tiny_train(augment=True, epochs=3)
    first = train(prepared, tmp_path / "a", ModelConfig(**TINY), config)
    second = train(prepared, tmp_path / "b", ModelConfig(**TINY), tiny_train(augment=True,
                                                                             epochs=3))
    for a, b in zip(first.history, second.history, strict=True):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_early_stopping_and_best_by_accuracy(prepared, tmp_path):
    result = train(prepared, tmp_path / "m", ModelConfig(**TINY),
                   tiny_train(epochs=30, monitor="val_accuracy", patience=2))
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2 < 30
    assert result.keep == "best" and result.kept_epoch == result.best_epoch  # auto, patience
    best = max(row["val_accuracy"] for row in result.history)
    assert result.best["val_accuracy"] == best
    # The first epoch reaching the best accuracy is the one kept (later ties are not better).
    assert result.best_epoch == next(r["epoch"] for r in result.history
                                     if r["val_accuracy"] == best)


@pytest.mark.slow
def test_model_folder_has_curves_and_no_random_layers(runner, prepared, tmp_path):
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--blocks", "2", "--filters", "4", "--head", "gap",
                                 "--batch-norm", "--epochs", "2", "--batch-size", "8",
                                 "--lr-schedule", "step", "--optimizer", "sgd",
                                 "--device", "cpu", "--mixup", "0.4"])
    assert result.exit_code == 0, result.output
    assert "Training on CPU (--device cpu)." in result.output
    assert "Kept the last epoch, 2 (--keep last)" in result.output
    assert "; the best by val_loss was epoch " in result.output
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["learning_rate"].iloc[1] > 0
    import catsdogs.train  # noqa: F401  (registers the accuracy of mixup's soft labels)

    model = keras.saving.load_model(out / "model.keras")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not any(kind.startswith("Random") for kind in kinds)
    assert {"BatchNormalization", "GlobalAveragePooling2D"} <= kinds
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["augment"] == "crop" and info["model"]["head"] == "gap"
    assert info["training"]["mixup"] == 0.4 and info["model"]["block_order"] == "conv-pool-norm"
    # mixup's soft labels still give an accuracy between 0 and 1 (rounded labels)
    assert history["accuracy"].between(0, 1).all() and history["accuracy"].max() > 0
    assert info["precision"] == "float32"
    assert not checkpoint_folder(out).exists()


class SigintAt(keras.callbacks.Callback):
    """Send this process a real SIGINT (what Ctrl-C does) after batch ``batch`` of epoch
    ``epoch`` (both 1-based)."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch + 1) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever was inherited:
    a test run started in the background by a non-interactive shell ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_sigint_in_the_middle_of_an_epoch(prepared, tmp_path, python_sigint):
    """A real SIGINT during epoch 2: the run stops there, keeps epoch 1 (model and
    checkpoint), and can be resumed."""
    out = tmp_path / "model"
    result = train(prepared, out, ModelConfig(**TINY), tiny_train(epochs=4),
                   callbacks=[SigintAt(epoch=2, batch=1)])
    assert result.interrupted and result.epochs_run == 1
    assert read_checkpoint(checkpoint_folder(out))["epochs_done"] == 1
    assert json.loads((out / "model.json").read_text())["best_epoch"] == 1


def heed_sigint() -> None:
    """In a child, before it starts: SIGINT back to its default disposition. A test run
    started in the background by a non-interactive shell (``.ci/run &``) ignores SIGINT, and
    children inherit that; Python then never installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_until(text: str, *options: str) -> tuple[subprocess.Popen, str]:
    """``catsdogs train OPTIONS`` in a real process, read until a line with ``text`` (or
    120 s); returns the running process and what it printed so far."""
    process = subprocess.Popen([sys.executable, "-m", "catsdogs", "train", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"),
                               preexec_fn=heed_sigint)
    deadline = time.monotonic() + 120
    seen = ""
    while text not in seen and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    return process, seen


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_then_resume(prepared, tmp_path):
    """SIGINT to ``catsdogs train``: exit 130, best model saved, --resume finishes the run."""
    out = tmp_path / "model"
    process, seen = train_until("epoch   3/500", "--data", str(prepared), "--out", str(out),
                                "--blocks", "1", "--filters", "4", "--epochs", "500",
                                "--batch-size", "4")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (seen + stdout, stderr)
    assert "Interrupted after" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert f"Saved model to {out}" in seen + stdout
    assert json.loads((out / "model.json").read_text())["interrupted"] is True
    done = read_checkpoint(checkpoint_folder(out))["epochs_done"]
    assert 2 <= done < 500  # the line of epoch 3 is printed before its checkpoint


@pytest.mark.slow
def test_sigkill_during_training_then_resume(runner, prepared, tmp_path):
    """SIGKILL gives train no chance to save anything: the checkpoint of the last finished
    epoch, written after every epoch beside --out, survives, and --resume finishes the run."""
    out = tmp_path / "model"
    options = ["--data", str(prepared), "--out", str(out), "--blocks", "1", "--filters", "4",
               "--epochs", "8", "--batch-size", "4", "--seed", "3"]
    process, seen = train_until("epoch   4/8", *options)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, seen
    assert not out.exists()  # nothing was published: the run did not finish
    done = read_checkpoint(checkpoint_folder(out))["epochs_done"]
    assert 3 <= done < 8, seen  # the line of epoch 4 is printed before its checkpoint

    result = runner.invoke(cli, ["train", *options, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"Resuming the interrupted run after epoch {done} " in result.output
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, 9))
    assert not checkpoint_folder(out).exists()
    assert json.loads((out / "model.json").read_text())["interrupted"] is False


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed", "bfloat16"])
def test_reduced_precision_run_saves_a_float32_model(prepared, tmp_path, precision):
    """--precision mixed (the GPU default) and bfloat16 (an option, fast on a CPU that has
    it) run on any CPU; the saved model computes in float32, with the trained weights."""
    out = tmp_path / "m"
    result = train(prepared, out, ModelConfig(**TINY),
                   tiny_train(epochs=1, precision=precision))
    assert result.precision == precision
    model = keras.saving.load_model(out / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    images = np.zeros((2, 24, 24, 3), dtype="float32")
    assert keras.ops.convert_to_numpy(model(images)).dtype == np.float32
    info = json.loads((out / "model.json").read_text())
    assert info["precision"] == precision and info["onnx"].get("file") == "model.onnx"


@pytest.mark.slow
def test_bfloat16_on_the_cpu_says_so(runner, prepared, tmp_path):
    from tests.helpers import TINY_MODEL

    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--epochs", "1", "--precision", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "Training on CPU, in bfloat16.\n" in result.output
    assert json.loads((out / "model.json").read_text())["precision"] == "bfloat16"


@pytest.mark.parametrize(("epochs", "budget", "pays", "device", "expected"), [
    (150, 0, True, "CPU", "float32"),  # the full length: bfloat16 cost accuracy there
    (150, DEFAULT_TIME_LIMIT, True, "CPU", "float32"),  # the default length's time limit
    (10_000, DEFAULT_TIME_LIMIT, True, "CPU", "bfloat16"),  # --budget 18m alone
    (10_000, 300, True, "CPU", "bfloat16"),  # --budget 5m alone, where it pays
    (40, 300, True, "CPU", "bfloat16"),  # --budget 5m --epochs 40
    (10_000, 300, False, "CPU", "float32"),  # a CPU where it does not pay
    (10_000, 300, True, "CPU (--device cpu)", "bfloat16"),
    (10_000, 300, True, "GPU (NVIDIA H100)", "mixed"),
    (150, 0, False, "GPU (NVIDIA H100)", "mixed"),
])
def test_auto_precision_follows_the_device_and_the_budget(epochs, budget, pays, device,
                                                          expected):
    from catsdogs.train import resolve_precision

    config = TrainConfig(epochs=epochs, budget=budget)
    assert resolve_precision(config, device, pays) == expected
    for chosen in ("float32", "bfloat16", "mixed"):  # what is asked for is never overruled
        assert resolve_precision(dataclasses.replace(config, precision=chosen), device,
                                 pays) == chosen


@pytest.mark.parametrize(("flags", "backbone", "expected"), [
    ("fpu avx512f avx512_bf16 amx_tile amx_bf16", "none", True),  # a Xeon with AMX
    ("fpu amx_tile amx_bf16", "none", True),
    # AVX512_BF16 alone (Zen 4, Zen 5): 1.3× the photos/s, and under --budget 5m on a Zen 5
    # ahead held out and on the other source over seven seeds (benchmarks/ACCURACY_NOTES.md)
    ("fpu avx512f avx512_bf16", "none", True),
    ("fpu avx512f", "none", False),  # no native bfloat16: it would be slower
    ("fpu amx_tile", "none", False),  # AMX tiles without their bfloat16 instructions
    ("fpu amx_bf16", "mobilenet_v3_small", False),  # not measured with a backbone
])
def test_bfloat16_pays_on_a_cpu_with_native_bfloat16(monkeypatch, tmp_path, flags, backbone,
                                                     expected):
    from catsdogs.train import bfloat16_pays

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr("catsdogs.backend.CPUINFO_FILE", cpuinfo)
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert bfloat16_pays(ModelConfig(backbone=backbone)) is (expected and on_tensorflow)


# The log line of a --budget run that --precision auto put in bfloat16.
AUTO_SAID = ("Training on CPU, in bfloat16 (--precision auto with --budget, on a CPU with "
             "native bfloat16: more epochs fit; --precision float32 for float32).\n")


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "said", "precision"), [
    ("fpu amx_bf16", AUTO_SAID, "bfloat16"),
    ("fpu avx512f avx512_bf16", AUTO_SAID, "bfloat16"),
    ("fpu avx512f", "Training on CPU.\n", "float32"),
])
def test_a_budget_trains_in_bfloat16_where_the_cpu_computes_it(runner, prepared, tmp_path,
                                                               monkeypatch, flags, said,
                                                               precision):
    """train --budget with --precision auto: bfloat16 on a CPU that computes it natively
    (AMX, or AVX512_BF16 alone), and the log says why; float32 on one without."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("bfloat16 is chosen automatically on TensorFlow only")
    from tests.helpers import TINY_MODEL

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr("catsdogs.backend.CPUINFO_FILE", cpuinfo)
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--epochs", "1", "--budget", "10m"])
    assert_clean_exit(result, 0)
    assert said in result.output
    info = json.loads((out / "model.json").read_text())
    assert info["precision"] == precision and info["training"]["precision"] == "auto"
