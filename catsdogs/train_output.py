"""What ``catsdogs train`` prints: the summary, the progress of each epoch, the plan of a
time limit or --budget, the class balance and the end of the run (the kept epoch, where the
model is, exit 130 if interrupted). Part of the command-line layer: cli.py's ``train`` calls
the core (catsdogs.train) with these as its callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import click

from catsdogs.config import format_duration


class TrainProgress:
    """What ``train`` prints while it runs: the summary, a bar per epoch, a line per epoch.

    The bar is drawn only on a terminal; piped or redirected, one line per epoch.
    """

    def __init__(self, total_epochs: int, budget: float = 0.0, time_limit: float = 0.0
                 ) -> None:
        import sys

        self.total_epochs = total_epochs
        self.terminal = sys.stdout.isatty()
        self.fine_tune_from = 0  # the first epoch of a backbone's fine-tuning stage
        self.budget = budget
        self.time_limit = time_limit  # seconds: the default length's limit, not a --budget
        self.requested = total_epochs
        self.planned = 0
        self.timed = 0  # epochs timed so far

    def on_plan(self, epochs: int, epoch_seconds: float) -> None:
        """--budget: say how many epochs it allows, once, when the first epoch is timed.
        The default length's time limit: say so only if it cuts the epochs, by the time of
        the second epoch (the first includes the set-up)."""
        self.timed += 1
        if self.time_limit:
            if not self.planned and self.timed >= 2 and epochs < self.requested:
                self.clear()  # the plan comes before the epoch's line: rub out its bar
                click.echo(time_limit_line(self.time_limit, self.requested, epochs,
                                           epoch_seconds))
                self.planned = epochs
            if self.planned:
                self.total_epochs = epochs
            return
        if not self.planned:
            self.clear()
            click.echo(budget_line(self.budget, epochs, epoch_seconds, "allows"))
        self.planned = self.total_epochs = epochs

    def on_start(self, model: Any, device_name: str) -> None:
        from catsdogs.backend import training_hint
        from catsdogs.model import summary_lines

        for line in summary_lines(model):
            click.echo(line)
        click.echo(f"Training on {device_name}.")
        if hint := training_hint(device_name):  # an NVIDIA driver, but no GPU in use
            click.echo(hint, err=True)

    def on_batch(self, step: int, steps: int, logs: dict[str, float]) -> None:
        width = 30
        done = int(width * step / steps) if steps else width
        click.echo(f"\r  [{'=' * done}{'.' * (width - done)}] {step}/{steps}"
                   f"  loss {logs.get('loss', float('nan')):.4f}"
                   f"  accuracy {logs.get('accuracy', float('nan')):.4f}", nl=False)

    def on_epoch(self, row: dict[str, Any]) -> None:
        import sys

        self.clear()
        if row["epoch"] == self.fine_tune_from:
            click.echo("Fine-tuning: the top of the backbone is trained too from here, at "
                       "--fine-tune-learning-rate.")
        click.echo(
            f"epoch {row['epoch']:>3}/{self.total_epochs}"
            f"  loss {row.get('loss', float('nan')):.4f}"
            f"  accuracy {row.get('accuracy', float('nan')):.4f}"
            f"  val_loss {row.get('val_loss', float('nan')):.4f}"
            f"  val_accuracy {row.get('val_accuracy', float('nan')):.4f}"
            f"  {row['seconds']:.1f}s{'  *' if row.get('best') else ''}"
        )
        sys.stdout.flush()  # one line per epoch, as it happens, also into a pipe or a file

    def clear(self) -> None:
        """Rub out the progress bar (on a terminal)."""
        if self.terminal:
            click.echo("\r\033[K", nl=False)


def budget_line(budget: float, epochs: int, epoch_seconds: float, verb: str) -> str:
    """``The 5m budget allows 37 epochs (7.9 s each).``"""
    name = f"{format_duration(budget)} " if budget else ""  # a resumed run's own budget
    return (f"The {name}budget {verb} {epochs} epoch"
            f"{'s' if epochs != 1 else ''} ({epoch_seconds:.1f} s each).")


def time_limit_line(time_limit: float, requested: int, epochs: int, epoch_seconds: float
                    ) -> str:
    """``The default 150 epochs take longer than 18m here: 97 fit (11.8 s each), ...``"""
    return (f"The default {requested} epochs take longer than "
            f"{format_duration(time_limit)} here: {epochs} fit "
            f"({epoch_seconds:.1f} s each), and the learning-rate schedule is fitted to "
            f"them; --epochs {requested} trains them all.")


def time_limit_outcome(time_limit: float, allowed: int, requested: int, said_cut: bool
                       ) -> str:
    """The end of the log of a default-length run: how many epochs its time limit allowed
    when it cut them; when the plan said early on that it would, but the epochs sped up and
    all ran, that instead (the schedule followed the plan as it was revised); else nothing."""
    limit = format_duration(time_limit)
    if allowed < requested:
        return (f"The {limit} limit of the default length allowed {allowed} of its "
                f"{requested} epochs.")
    if said_cut:
        return (f"The {limit} limit of the default length allowed all {requested} epochs in "
                "the end: they ran faster than first planned.")
    return ""


class ResumedRun(NamedTuple):
    """What the checkpoint of an interrupted run says of its length."""

    epochs: int  # all its epochs, a backbone's fine-tuning ones included
    budget: float  # seconds; 0 for none
    backbone: str


def resume_banner(out: Path) -> ResumedRun:
    """Say which run ``--resume`` continues, and return its length."""
    from catsdogs.train import checkpoint_folder, read_checkpoint

    state = read_checkpoint(checkpoint_folder(out))
    click.echo(f"Resuming the interrupted run after epoch {state['epochs_done']} "
               f"(its options are used).")
    training = state["training"]
    backbone = state["model"].get("backbone", "none")
    epochs = planned_epochs(backbone, int(training["epochs"]),
                            int(training.get("fine_tune_epochs", 0)))
    return ResumedRun(epochs, float(training.get("budget", 0)), backbone)


def planned_epochs(backbone: str, epochs: int, fine_tune_epochs: int) -> int:
    """The epochs a run has: a backbone's fine-tuning epochs come after --epochs."""
    return epochs + (fine_tune_epochs if backbone != "none" else 0)


def report_balance(balance: Any) -> None:
    """Say how the training photos are spread over the classes when it matters: class
    weights in use, or one class with at least 1.5x the photos of another."""
    if balance.weights is not None:
        weights = ", ".join(f"{name} {value:.2f}" for name, value in balance.weights.items())
        click.echo(f"Class weights (balanced): {weights}")
    elif balance.imbalanced:
        click.echo(f"note: {balance.largest} has {balance.ratio:.1f}x the training photos of "
                   f"{balance.smallest} ({balance.counts[balance.largest]:,} vs "
                   f"{balance.counts[balance.smallest]:,}); --class-weight balanced makes "
                   "each class count the same")


def report_training(result: Any, data: Path, out: Path, patience: int,
                    time_limit: float = 0.0, default_epochs: int = 0,
                    said_cut: bool = False) -> None:
    """The end of ``train``: the kept epoch, where the model is, exit 130 if interrupted.
    ``time_limit``: the default length's limit (seconds) over its ``default_epochs``;
    ``said_cut``: whether the log said, early on, that they would not all fit."""
    if result.interrupted:
        click.echo(f"Interrupted after {result.epochs_run} finished epoch(s).", err=True)
    if not result.saved:
        click.echo("No epoch finished: nothing saved.", err=True)
        raise SystemExit(130)
    if result.stopped_early:
        click.echo(f"Stopped early: no better {result.monitor} for {patience} epochs.")
    click.echo(kept_line(result))
    if time_limit:
        if line := time_limit_outcome(time_limit, result.budget_epochs, default_epochs,
                                      said_cut):
            click.echo(line)
    elif result.budget:
        click.echo(budget_line(result.budget, result.budget_epochs, result.epoch_seconds,
                               "allowed"))
    if result.worker_index == 0:
        click.echo(f"Saved model to {out} (model.keras, model.json, history.csv, curves.png)")
        from catsdogs.export import skipped_note

        if note := skipped_note(out):  # e.g. no ONNX exporter on this backend
            click.echo(note)
    else:  # multi-worker training: only the chief (worker 0) writes --out
        click.echo(f"Worker {result.worker_index} of {result.num_workers} done; the chief "
                   "(worker 0) saved the model, nothing was written here.")
    if result.interrupted:
        if result.checkpoint is not None:
            click.echo(f"The model so far is in {out}. Continue training with: "
                       f"catsdogs train --data {data} --out {out} --resume", err=True)
        raise SystemExit(130)


def kept_line(result: Any) -> str:
    """Which epoch was saved and its validation figures, e.g. "Best epoch 12 by val_loss:
    val_accuracy 0.9000, val_loss 0.3000 (1,600 training photos, 400 validation, 95 s)"."""
    sizes = ("", "")
    if result.train_size != result.image_size:  # --train-scale
        sizes = (f" at {result.train_size} px", f" at {result.image_size} px")
    kept = result.kept
    photos = (f"({result.num_train:,} training photos{sizes[0]}, {result.num_validation:,} "
              f"validation{sizes[1]}, {result.seconds:.0f} s)")
    figures = (f"val_accuracy {kept.get('val_accuracy', 0):.4f}, "
               f"val_loss {kept.get('val_loss', 0):.4f} {photos}")
    if result.keep == "best":
        return f"Best epoch {result.kept_epoch} by {result.monitor}: {figures}"
    return (f"Kept the last epoch, {result.kept_epoch} (--keep last): {figures}; the best by "
            f"{result.monitor} was epoch {result.best_epoch}")
