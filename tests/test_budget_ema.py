"""Training for a time budget (--budget), and the moving average of the weights (--ema)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from catsdogs.backend import keras as import_keras
from catsdogs.cli import cli
from catsdogs.config import DEFAULT_TIME_LIMIT, ModelConfig, TrainConfig
from catsdogs.train import budget_rate, checkpoint_folder, read_checkpoint, train
from tests.helpers import TINY_MODEL, assert_clean_exit
from tests.test_train_control import InterruptAfter

DEFAULT_EPOCHS = TrainConfig().epochs  # the default length, from its one source

keras = import_keras()
TINY = dict(blocks=1, filters=4, dense=(), dropout_rate=0.0)


def tiny_train(**changes) -> TrainConfig:
    settings = dict(epochs=4, batch_size=4, learning_rate=0.01, augment="none", seed=7)
    settings.update(changes)
    return TrainConfig(**settings)


def test_budget_schedule_warms_up_then_decays_to_its_floor():
    config = tiny_train(budget=60.0, warmup_epochs=1)
    rates = [budget_rate(config, step, 50, 10) for step in range(50)]
    assert rates[0] == pytest.approx(0.001) and rates[10] == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.0001, rel=0.2)  # floor: 1% of the rate
    assert all(a >= b for a, b in zip(rates[10:-1], rates[11:], strict=True))
    # the same curve as Keras' CosineDecay with warm-up, which the run without a budget uses
    schedule = keras.optimizers.schedules.CosineDecay(0.001, 40, alpha=0.01,
                                                      warmup_target=0.01, warmup_steps=10)
    for step in (0, 5, 10, 25, 49):
        expected = float(keras.ops.convert_to_numpy(schedule(step)))
        assert rates[step] == pytest.approx(expected, rel=1e-4)


class Capture(keras.callbacks.Callback):
    """The model's weights and the optimizer's other copy at the end of every epoch (after
    catsdogs' own callbacks, as the caller's callbacks run)."""

    def __init__(self) -> None:
        super().__init__()
        self.model_weights: list[list[np.ndarray]] = []
        self.other: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.model_weights.append([v.numpy() for v in self.model.trainable_variables])
        averages = self.model.optimizer._model_variables_moving_average
        self.other.append([v.numpy() for v in averages])


@pytest.mark.slow
def test_the_moving_average_is_validated_and_saved(prepared, tmp_path):
    capture = Capture()
    out = tmp_path / "m"
    result = train(prepared, out, ModelConfig(**TINY), tiny_train(epochs=3, ema=0.9),
                   callbacks=[capture])
    kept = result.kept_epoch - 1
    saved = keras.saving.load_model(out / "model.keras")
    saved_weights = [v.numpy() for v in saved.trainable_variables]
    # At the end of an epoch the model holds the average (what was validated, kept and
    # saved); the trained weights wait in the optimizer until the next epoch.
    for stored, captured in zip(saved_weights, capture.model_weights[kept], strict=True):
        np.testing.assert_allclose(stored, captured, rtol=1e-6)
    assert any(not np.allclose(a, b) for a, b in
               zip(capture.model_weights[0], capture.other[0], strict=True))


@pytest.mark.slow
def test_budget_with_epochs_whichever_ends_first_and_schedule_ends(runner, prepared, tmp_path):
    """--epochs 3 with a budget of an hour: 3 epochs, the learning rate at its floor."""
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--batch-size", "4", "--learning-rate", "0.01",
                                 "--epochs", "3", "--warmup-epochs", "1", "--budget", "1h"])
    assert_clean_exit(result, 0)
    assert INEXACT_SEED_NOTE not in result.output  # no --seed given: nothing to warn of
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["learning_rate"].iloc[-1] < 0.01 * 0.05
    assert re.search(r"^The 1h budget allows 3 epochs \(\d+\.\d s each\)\.$", result.output,
                     re.MULTILINE), result.output
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["budget"] == 3600 and info["training"]["epochs"] == 3


INEXACT_SEED_NOTE = ("note: --seed repeats a run exactly only with its epochs fixed: under "
                     "--budget they follow this machine's speed (give --epochs without "
                     "--budget to repeat a run)")


def test_budget_alone_says_its_plan_before_the_first_epoch_line(runner, prepared, tmp_path):
    """--budget without --epochs: the plan is said when the first epoch ends, before that
    epoch's line, and every epoch line counts against the plan of its time (never against
    the uncapped 10,000 epochs). A --seed given with it is told that it will not repeat
    the run."""
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--batch-size", "4", "--budget", "4s",
                                 "--seed", "7"])
    assert_clean_exit(result, 0)
    lines = result.output.splitlines()
    assert lines[0] == INEXACT_SEED_NOTE, lines[:3]
    plan = next(i for i, line in enumerate(lines) if line.startswith("The 4s budget allows"))
    planned = int(re.match(r"The 4s budget allows (\d+) epochs?", lines[plan]).group(1))
    assert lines[plan + 1].startswith(f"epoch   1/{planned}  loss"), lines
    totals = [int(m.group(1)) for line in lines if (m := re.match(r"epoch +\d+/(\d+)", line))]
    assert totals and max(totals) < 10_000, lines
    ran = len(pd.read_csv(out / "history.csv"))
    assert re.search(rf"^The 4s budget allowed {ran} epochs? ", result.output, re.MULTILINE)


@pytest.mark.parametrize("args, budget, noted", [
    (["--seed", "7", "--budget", "5m"], 300.0, True),
    (["--seed", "7", "--epochs", "40"], 0.0, False),  # fixed epochs: the run repeats
    (["--budget", "5m"], 300.0, False),  # the default seed: the user asked for nothing
])
def test_a_seed_with_a_budget_is_told_it_does_not_repeat_the_run(capsys, args, budget,
                                                                 noted):
    from catsdogs.cli import note_inexact_seed, train

    with train.make_context("train", args) as ctx:
        note_inexact_seed(ctx, budget)
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (INEXACT_SEED_NOTE + "\n" if noted else "")


@pytest.mark.parametrize("time_limit, line", [
    (0.0, "The 5m budget allows 25 epochs (11.3 s each)."),
    (300.0, "The default 150 epochs take longer than 5m here: 25 fit (11.3 s each)"),
])
def test_a_plan_on_a_terminal_rubs_out_the_progress_bar_first(capsys, monkeypatch,
                                                              time_limit, line):
    """The plan is said before the epoch's line, while the epoch's progress bar is still
    drawn: on a terminal it rubs the bar out first, as the epoch's line does."""
    import click.utils

    from catsdogs.train_output import TrainProgress

    monkeypatch.setattr(click.utils, "should_strip_ansi", lambda *args: False)  # a terminal

    progress = TrainProgress(150, budget=300.0, time_limit=time_limit)
    progress.terminal = True
    for _ in range(2):  # a time limit is said from the second epoch on
        progress.on_batch(45, 45, {"loss": 0.5, "accuracy": 0.8})
        progress.on_plan(25, 11.3)
    output = capsys.readouterr().out
    assert f"45/45  loss 0.5000  accuracy 0.8000\r\033[K{line}" in output, repr(output)


@pytest.mark.slow
def test_budget_stops_in_time_with_the_schedule_at_its_end(prepared, tmp_path):
    plans: list[tuple[int, float]] = []
    budget = 12.0
    result = train(prepared, tmp_path / "m", ModelConfig(**TINY),
                   tiny_train(epochs=10_000, budget=budget, warmup_epochs=1),
                   on_plan=lambda epochs, seconds: plans.append((epochs, seconds)))
    assert result.seconds < budget + 4
    assert 1 < result.epochs_run < 10_000 and result.budget_epochs == result.epochs_run
    assert plans and plans[-1][0] == result.epochs_run
    assert result.history[-1]["learning_rate"] < 0.01 * 0.05


@pytest.mark.parametrize("budget, reserve", [
    (300.0, 6.0),  # --budget 5m: BUDGET_SAVE_SECONDS
    (20.0, 1.0),  # a short budget keeps 5% of itself
])
def test_a_budget_keeps_time_for_saving_and_exiting(budget, reserve):
    """The last training step ends ``reserve`` seconds before the budget is up, so that the
    validation of an epoch cut short, the model folder and the exit fit in the budget: a
    step past that point stops training, and the plan counts epochs in the time before it.
    (With the last step allowed up to the deadline, two runs of --budget 5m on all 2,000
    photos took 299 and 303 s.)"""
    import time
    from types import SimpleNamespace

    from catsdogs.train import Budget

    config = TrainConfig(epochs=10_000, budget=budget)
    model = SimpleNamespace(stop_training=False)
    now = time.perf_counter()
    # the deadline 0.5 s past the reserve's start: a step ending now is past it
    late = Budget(config, 10, budget, started=now - budget + reserve - 0.5)
    late.set_model(model)
    assert late.stop_at == pytest.approx(late.deadline - reserve)
    late.on_train_batch_end(0)
    assert model.stop_training  # the old rule (up to the deadline) trained on here

    model.stop_training = False
    plans: list[int] = []
    early = Budget(config, 10, budget, started=now - budget + reserve + 10.5,
                   report=lambda epochs, seconds: plans.append(epochs))
    early.set_model(model)
    early.on_train_batch_end(0)
    assert not model.stop_training  # 10.5 s of training time left
    early.mark = time.perf_counter() - 4.0  # the first epoch took 4 s
    early.on_epoch_end(0)
    assert plans == [1 + 2] and not model.stop_training  # two more 4 s epochs fit in 10.5 s


@pytest.mark.slow
def test_budget_survives_an_interruption(prepared, tmp_path):
    out = tmp_path / "m"
    config = tiny_train(epochs=10_000, budget=20.0)
    first = train(prepared, out, ModelConfig(**TINY), config, callbacks=[InterruptAfter(2)])
    assert first.interrupted
    state = read_checkpoint(checkpoint_folder(out))
    left = state["budget"]["seconds_left"]
    assert 0 < left < 20 and state["budget"]["planned"] >= 2
    resumed = train(prepared, out, ModelConfig(**TINY), TrainConfig(), resume=True)
    assert not resumed.interrupted and resumed.seconds < left + 4
    assert resumed.epochs_run == resumed.budget_epochs > 2


def test_the_default_length_keeps_to_its_time_limit(runner, prepared, tmp_path, monkeypatch):
    """No --epochs and no --budget: the default epochs (DEFAULT_EPOCHS) stop at
    DEFAULT_TIME_LIMIT (8 s here) with the schedule fitted to the epochs that fit, and say so."""
    from catsdogs import config as config_module

    monkeypatch.setattr(config_module, "DEFAULT_TIME_LIMIT", 8.0)
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--batch-size", "4", "--learning-rate", "0.01",
                                 "--warmup-epochs", "1"])
    assert_clean_exit(result, 0)
    history = pd.read_csv(out / "history.csv")
    ran = len(history)
    assert 1 <= ran < DEFAULT_EPOCHS
    assert re.search(rf"^The 8s limit of the default length allowed {ran} of its "
                     rf"{DEFAULT_EPOCHS} epochs\.$", result.output, re.MULTILINE), result.output
    if ran >= 2:  # the first epoch (set-up included) alone does not say it, nor plan
        # the schedule, fitted to the epochs that fit, ran to (near) its end
        assert history["learning_rate"].iloc[-1] < 0.01 * 0.2
        assert re.search(rf"^The default {DEFAULT_EPOCHS} epochs take longer than 8s "
                         r"here: \d+ fit "
                         r"\(\d+\.\d s each\), and the learning-rate schedule is fitted to "
                         rf"them; --epochs {DEFAULT_EPOCHS} trains them all\.$", result.output,
                         re.MULTILINE), result.output
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["budget"] == 8 and info["training"]["epochs"] == DEFAULT_EPOCHS


@pytest.mark.parametrize("allowed, said_cut, line", [
    (139, True, "The 18m limit of the default length allowed 139 of its 150 epochs."),
    # the plan said 144 would fit at epoch 2; the host sped up and all 150 ran (seen on the
    # Zen 5, 2026-12-07): the end of the log says so rather than leave the plan standing
    (150, True, "The 18m limit of the default length allowed all 150 epochs in the end: "
                "they ran faster than first planned."),
    (150, False, ""),  # never cut, never said: nothing to add
])
def test_the_end_of_a_default_length_run_says_what_its_limit_allowed(allowed, said_cut,
                                                                     line):
    from catsdogs.train_output import time_limit_outcome

    assert time_limit_outcome(1080.0, allowed, 150, said_cut) == line


def test_a_default_length_plan_is_remembered_once_said(capsys):
    """``TrainProgress.planned`` (what train passes on as ``said_cut``) is set when, and only
    when, the log says that the default epochs will not all fit."""
    from catsdogs.train_output import TrainProgress

    progress = TrainProgress(150, budget=1080.0, time_limit=1080.0)
    progress.on_plan(150, 7.0)
    progress.on_plan(150, 7.0)  # from the second epoch on, but all fit: nothing said
    assert not progress.planned and capsys.readouterr().out == ""
    progress.on_plan(144, 7.4)
    assert progress.planned == 144
    assert capsys.readouterr().out.startswith("The default 150 epochs take longer than 18m")


@pytest.mark.slow
def test_a_resumed_default_length_run_keeps_its_time_limit_wording(runner, prepared, tmp_path,
                                                                   monkeypatch):
    """A default-length run, interrupted and resumed, still speaks of the default length's
    limit, not of a budget nobody gave."""
    from catsdogs import config as config_module

    monkeypatch.setattr(config_module, "DEFAULT_TIME_LIMIT", 8.0)
    out = tmp_path / "m"
    first = train(prepared, out, ModelConfig(**TINY),
                  tiny_train(epochs=DEFAULT_EPOCHS, budget=8.0),
                  callbacks=[InterruptAfter(2)])
    assert first.interrupted
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--resume"])
    assert_clean_exit(result, 0)
    ran = len(pd.read_csv(out / "history.csv"))
    assert 2 < ran < DEFAULT_EPOCHS and "budget" not in result.output
    assert re.search(rf"^The 8s limit of the default length allowed {ran} of its "
                     rf"{DEFAULT_EPOCHS} epochs\.$", result.output, re.MULTILINE), result.output


@pytest.mark.parametrize("epochs, budget, backbone, limited", [
    (DEFAULT_EPOCHS, DEFAULT_TIME_LIMIT, "none", True),  # the default length
    (DEFAULT_EPOCHS, 300.0, "none", False),  # --budget 5m
    (DEFAULT_EPOCHS - 1, DEFAULT_TIME_LIMIT, "none", False),  # --epochs 149 --budget 18m
    (DEFAULT_EPOCHS, DEFAULT_TIME_LIMIT, "mobilenet_v3_small", False),  # backbones: no limit
])
def test_a_resumed_run_keeps_the_time_limit_only_if_it_was_the_default_length(
        epochs, budget, backbone, limited):
    from catsdogs.cli import resumed_time_limit
    from catsdogs.train_output import ResumedRun

    limit = resumed_time_limit(ResumedRun(epochs, budget, backbone))
    assert limit == (DEFAULT_TIME_LIMIT if limited else 0.0)


@pytest.mark.parametrize("length", [["--epochs", "2"], ["--config", "RECIPE"]])
def test_a_chosen_length_has_no_time_limit(runner, prepared, tmp_path, monkeypatch, length):
    """--epochs, or a recipe that sets the epochs, chooses the length: no time limit, even
    one so short that it would cut the run."""
    from catsdogs import config as config_module

    monkeypatch.setattr(config_module, "DEFAULT_TIME_LIMIT", 0.5)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("epochs = 2\n")
    length = [str(recipe) if part == "RECIPE" else part for part in length]
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 *TINY_MODEL, "--batch-size", "4", *length])
    assert_clean_exit(result, 0)
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]
    assert "limit" not in result.output and "budget" not in result.output
    assert json.loads((out / "model.json").read_text())["training"]["budget"] == 0


def test_a_time_limit_that_does_not_bind_trains_as_no_limit(prepared, tmp_path):
    """The default length runs under its time limit (a budget): while the limit does not
    cut the epochs, the budget's per-step schedule is Keras' cosine schedule, so the run
    is the one without a limit, epoch for epoch (benchmarks of the default ran without).
    (float32 for both: a budget that is not the default length's limit trains in bfloat16
    on a CPU that has it.)"""
    model = ModelConfig(**TINY)
    runs = [train(prepared, tmp_path / f"m{budget}", model,
                  tiny_train(epochs=3, warmup_epochs=1, budget=budget, precision="float32"))
            for budget in (0.0, 3600.0)]
    # (history's learning_rate is logged one step apart: the schedule's next step, the
    # budget's last one; the rates used are the same)
    for plain, limited in zip(runs[0].history, runs[1].history, strict=True):
        for key in ("loss", "val_loss"):
            assert plain[key] == pytest.approx(limited[key], rel=1e-4), (key, plain, limited)
    assert runs[1].budget_epochs == 3
