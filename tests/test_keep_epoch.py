"""Which epoch's weights are saved: ``--keep best`` (by ``--monitor``) or ``--keep last``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catsdogs.backend import keras as import_keras
from catsdogs.cli import cli
from catsdogs.config import ModelConfig, TrainConfig
from catsdogs.train import BestEpoch, checkpoint_folder, read_checkpoint, train
from tests.helpers import TINY_MODEL, TINY_TRAIN, assert_clean_exit
from tests.test_budget_ema import Capture
from tests.test_train_control import TINY, InterruptAfter, tiny_train

keras = import_keras()


class Counter:
    """A stand-in model whose weights are the number of times they were read."""

    def __init__(self) -> None:
        self.reads = 0
        self.restored: list[np.ndarray] | None = None

    def get_weights(self) -> list[np.ndarray]:
        self.reads += 1
        return [np.array([self.reads])]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.restored = weights


def run_keeper(keep: str, losses: list[float]) -> tuple[BestEpoch, Counter]:
    model = Counter()
    keeper = BestEpoch(monitor="val_loss", model=model, keep=keep)
    for epoch, loss in enumerate(losses):
        keeper.on_epoch_begin(epoch)
        keeper.on_epoch_end(epoch, {"val_loss": loss, "learning_rate": 0.1})
    return keeper, model


@pytest.mark.parametrize(("keep", "kept_epoch"), [("best", 2), ("last", 4)])
def test_keeper_keeps_the_best_or_the_last_epoch(keep, kept_epoch):
    keeper, model = run_keeper(keep, [0.6, 0.3, 0.4, 0.5])
    assert keeper.best_epoch == 2 and keeper.best_row["val_loss"] == 0.3  # either way
    assert keeper.kept_epoch == kept_epoch
    assert keeper.kept_row["val_loss"] == [0.6, 0.3, 0.4, 0.5][kept_epoch - 1]
    assert [row["best"] for row in keeper.rows] == [True, True, False, False]
    keeper.restore()
    # best: the weights read at epoch 2 (the 2nd read); last: read at every epoch
    assert model.restored == [np.array([kept_epoch])]


def test_last_keeps_an_epoch_whose_monitor_is_not_a_number():
    """--keep last means the last epoch, even one that diverged; best never picks NaN."""
    keeper, _ = run_keeper("last", [0.6, float("nan")])
    assert keeper.kept_epoch == 2 and keeper.best_epoch == 1


def test_keeper_state_round_trips_and_reads_a_checkpoint_from_before_keep():
    keeper, _ = run_keeper("last", [0.6, 0.3, 0.4])
    again = BestEpoch(keep="last")
    again.load_state(json.loads(json.dumps(keeper.state())), [np.zeros(1)])
    assert (again.best_epoch, again.kept_epoch, again.kept_row) == (2, 3, keeper.kept_row)
    # A checkpoint from before --keep has no keep in its settings: read as best
    # (TRAINING_ABSENT_MEANS), its keeper keeps the best epoch.
    old = BestEpoch(keep=TrainConfig.from_dict({}).keep)
    old.load_state(json.loads(json.dumps(keeper.state())), None)
    assert old.kept_epoch == 2 and old.kept_row == keeper.best_row


def test_patience_needs_keep_best(runner, prepared, tmp_path):
    with pytest.raises(ValueError, match="use it with --keep best"):
        TrainConfig(keep="last", patience=3)
    assert TrainConfig(keep="best", patience=3).patience == 3
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--keep", "last", "--patience", "3"])
    assert_clean_exit(result, 1, "Error: --patience stops training when "
                      "--monitor stops improving, to keep the best epoch: use it with "
                      "--keep best")
    assert not out.exists()


def test_auto_keeps_the_last_epoch_unless_patience_stops_early():
    assert TrainConfig().keep == "auto" and TrainConfig().resolved_keep == "last"
    assert TrainConfig(patience=5).resolved_keep == "best"
    assert TrainConfig(keep="best").resolved_keep == "best"
    assert TrainConfig(keep="last").resolved_keep == "last"


def test_keep_from_an_older_model_json_means_best():
    assert TrainConfig.from_dict({"epochs": 3}).keep == "best"
    assert TrainConfig.from_dict({"epochs": 3, "keep": "last"}).keep == "last"


@pytest.mark.slow
def test_keep_last_saves_the_last_epoch(prepared, tmp_path):
    """With the moving average of the weights, as the default recipe trains: the average at
    the end of the last epoch is saved, not that of the best epoch."""
    capture = Capture()
    out = tmp_path / "m"
    # A rate too high for plain SGD: the first epoch is the best by val_loss, on this seed.
    config = tiny_train(keep="last", ema=0.9, optimizer="sgd", learning_rate=0.2,
                        lr_schedule="constant")
    result = train(prepared, out, ModelConfig(**TINY), config, callbacks=[capture])
    assert result.best_epoch < 4, "the test needs a run whose best epoch is not its last"
    assert result.keep == "last" and result.kept_epoch == result.epochs_run == 4
    assert result.kept == result.history[-1]
    saved = keras.saving.load_model(out / "model.keras")
    for stored, captured in zip(saved.trainable_variables, capture.model_weights[-1],
                                strict=True):
        np.testing.assert_allclose(stored.numpy(), captured, rtol=1e-6)
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["keep"] == "last"
    assert info["kept_epoch"] == 4 and info["kept"]["val_loss"] == result.history[-1]["val_loss"]
    assert info["best_epoch"] == result.best_epoch  # still the best by --monitor
    assert info["best"]["val_loss"] == min(row["val_loss"] for row in result.history)


class InterruptAtFirstBatch(keras.callbacks.Callback):
    """Ctrl-C in the first batch: no epoch of this run ends."""

    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_keep_last_is_resumed_from_the_training_state(prepared, tmp_path, ema):
    """With --keep last the checkpoint writes no second copy of the kept weights: they are
    the model's in the training state. A resumed run takes them from there, so one stopped
    before its first epoch ends saves the checkpoint's epoch (with --ema: its average)."""
    out = tmp_path / "m"
    train(prepared, out, ModelConfig(**TINY), tiny_train(keep="last", ema=ema),
          callbacks=[InterruptAfter(2)])
    partial = checkpoint_folder(out)
    state = read_checkpoint(partial)
    assert state["kept_weights"] is None and state["keeper"]["rows"][-1]["epoch"] == 2
    assert sorted(path.name for path in partial.iterdir()) == ["state.json",
                                                              "training-00002.npz"]
    saved = keras.saving.load_model(out / "model.keras").get_weights()
    assert json.loads((out / "model.json").read_text())["kept_epoch"] == 2
    again = train(prepared, out, ModelConfig(**TINY), TrainConfig(), resume=True,
                  callbacks=[InterruptAtFirstBatch()])
    assert again.kept_epoch == 2 and again.epochs_run == 2
    for before, after in zip(saved, keras.saving.load_model(out / "model.keras").get_weights(),
                             strict=True):
        np.testing.assert_array_equal(before, after)  # with --ema, the average again
    resumed = train(prepared, out, ModelConfig(**TINY), TrainConfig(), resume=True)
    assert resumed.keep == "last" and resumed.kept_epoch == 4 and resumed.resumed_from == 2


@pytest.mark.slow
def test_keep_best_checkpoints_the_best_epochs_weights_apart(prepared, tmp_path):
    out = tmp_path / "m"
    result = train(prepared, out, ModelConfig(**TINY), tiny_train(keep="best"),
                   callbacks=[InterruptAfter(3)])
    state = read_checkpoint(checkpoint_folder(out))
    assert state["kept_weights"] == f"kept-{result.best_epoch:05d}.npz"
    assert (checkpoint_folder(out) / state["kept_weights"]).exists()


@pytest.mark.slow
def test_a_checkpoint_from_before_keep_is_resumed_keeping_the_best(prepared, tmp_path):
    """A run interrupted by an older catsdogs: its state.json names ``best_weights`` and
    its training settings have no ``keep``."""
    out = tmp_path / "m"
    train(prepared, out, ModelConfig(**TINY), tiny_train(keep="best"),
          callbacks=[InterruptAfter(2)])
    partial = checkpoint_folder(out)
    state = read_checkpoint(partial)
    kept = state.pop("kept_weights")
    (partial / kept).rename(partial / kept.replace("kept-", "best-"))
    state["best_weights"] = kept.replace("kept-", "best-")
    del state["training"]["keep"]
    (partial / "state.json").write_text(json.dumps(state))
    resumed = train(prepared, out, ModelConfig(**TINY), TrainConfig(), resume=True)
    assert resumed.keep == "best" and resumed.kept_epoch == resumed.best_epoch
    assert resumed.epochs_run == 4


@pytest.mark.slow
def test_train_says_which_epoch_it_kept(runner, prepared, tmp_path):
    """By default (auto, no --patience) the last epoch; model.json says "last", resolved."""
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, *TINY_TRAIN])
    assert_clean_exit(result, 0)
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["keep"] == "last" and info["kept_epoch"] == 4
    best = info["best_epoch"]
    line = next(line for line in result.output.splitlines() if line.startswith("Kept"))
    assert line.startswith("Kept the last epoch, 4 (--keep last): val_accuracy ")
    assert line.endswith(f"; the best by val_loss was epoch {best}")
    again = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                *TINY_MODEL, *TINY_TRAIN, "--keep", "best", "--force"])
    assert_clean_exit(again, 0)
    best = json.loads((out / "model.json").read_text())["best_epoch"]
    assert f"\nBest epoch {best} by val_loss: val_accuracy " in again.output
    assert "Kept the last" not in again.output
