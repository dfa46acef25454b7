"""The ``catsdogs`` command line: each command parses options, calls one core function,
prints the result. Keras and TensorFlow are imported inside command bodies only, so that
``catsdogs --help`` stays instant."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click

from catsdogs import __version__, config
from catsdogs.config import ModelConfig, TrainConfig, is_time_limited_default
from catsdogs.options import configs_from, setting_options
from catsdogs.recipe import ignored_settings, recipe_text
from catsdogs.train_output import (
    ResumedRun,
    TrainProgress,
    planned_epochs,
    report_balance,
    report_training,
    resume_banner,
)
from catsdogs.tta import TTA_DEFAULT

DEFAULT_DATA = "prepared"
DEFAULT_MODEL = "model"
PREPARE_SIZE = 160  # train --train-scale's 0.8 trains on 128 px crops of them
SAMPLE_SIZE = 64  # the built-in sample's photos are at most 80 px


def help_with(**values: Any) -> Callable[[Any], Any]:
    """Write ``values`` into a command's help (``{name}`` in its docstring), so that a
    default the help names comes from its one source."""
    def decorate(command: Any) -> Any:
        command.__doc__ = command.__doc__.format(**values)
        return command
    return decorate


# The default recipe's blocks, epochs, time limit and validation share, from config.py.
help_with_defaults = help_with(blocks=ModelConfig().blocks, epochs=TrainConfig().epochs,
                               minutes=config.DEFAULT_TIME_LIMIT / 60,
                               validation=TrainConfig().validation_split)


def ensure_standard_streams() -> None:
    """Give a closed standard stream (``2>&-``, some service managers) the null device.

    Otherwise the next file opened takes its number: libjpeg's and TensorFlow's messages to
    file descriptor 2 would land in that file (a lock file, a dataset), and Python, which
    leaves ``sys.stderr`` as None, would fail on the first message it prints.
    """
    import sys

    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115
    # Text that cannot be encoded (a file name that is not UTF-8, under a UTF-8 locale whose
    # streams are strict) is printed with backslash escapes rather than failing the command.
    # (Only the process's own streams: a test runner's stand-ins are left as they are.)
    for stream in (sys.stdout, sys.stderr):
        if (stream in (sys.__stdout__, sys.__stderr__)
                and getattr(stream, "errors", None) == "strict"):
            stream.reconfigure(errors="backslashreplace")


class CatsDogsGroup(click.Group):
    """Turns the core's ValueError/OSError into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        ensure_standard_streams()
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Whoever read our output has gone (`catsdogs predict photos/ | head`): stop
            # quietly, with the status of a program killed by SIGPIPE, as `cat` would.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # the final flush of what is still buffered goes nowhere
            os.close(null)
            ctx.exit(141)
        except (ValueError, OSError) as error:
            if os.environ.get("CATSDOGS_DEBUG"):
                raise
            message = str(error) if str(error) else type(error).__name__
            if isinstance(error, OSError) and error.filename and error.strerror:
                message = f"{error.strerror}: {error.filename}"
            raise click.ClickException(message.splitlines()[0]) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=CatsDogsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catsdogs")
def cli() -> None:
    """Turn a folder of cat and dog photos into a trained Keras classifier.

    \b
    Example:
        catsdogs prepare photos/          # find, check and resize the photos
        catsdogs train --filters 32       # build, summarize and train the model
        catsdogs predict new_photo.jpg    # cat or dog, and how sure
    """


def sample_folder() -> Path:
    """The built-in sample's training photos (its ``unseen`` photos are kept out of it)."""
    return Path(str(resources.files("catsdogs") / "sample_data" / "train"))


@cli.command()
@help_with(sample_size=SAMPLE_SIZE)
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Folder to write the prepared dataset to.")
@click.option("--size", type=click.IntRange(8, 2048), default=None,
              help="Side in pixels of the square images the photos are resized to.  "
                   f"[default: {PREPARE_SIZE}; {SAMPLE_SIZE} for the built-in sample]")
@click.option("--resize", "policy", type=click.Choice(["stretch", "crop", "pad"]),
              default="stretch", show_default=True,
              help="stretch: squash to a square; crop: keep the centre square; "
                   "pad: keep the whole photo with black bars.")
@click.option("--color", type=click.Choice(["rgb", "gray"]), default="rgb", show_default=True,
              help="rgb: three channels; gray: one (0.299 R + 0.587 G + 0.114 B), for "
                   "grayscale networks such as --config mnist or lenet.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Share of photos set aside as a test split "
                                      "(stratified, seeded; at least one of each class); "
                                      "train never sees them.")
@click.option("--seed", type=int, default=1337, show_default=True,
              help="Seed for the test split.")
@click.option("--force", is_flag=True, help="Replace a different prepared dataset in --out.")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=None,
              help="Processes decoding photos in parallel.  [default: all cores, "
                   "one per 64 photos at most]")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar (it is only drawn on a terminal anyway).")
def prepare(source: Path | None, out: Path, size: int | None, policy: str, color: str,
            test_fraction: float, seed: int, force: bool, workers: int | None,
            quiet: bool) -> None:
    """Find, check and resize the photos in SOURCE into a training-ready dataset.

    SOURCE holds one sub-folder per class (cats/, dogs/; any names) or Kaggle-style
    files named cat.1.jpg, dog.1.jpg. Without SOURCE, the built-in sample of 800
    small photos is used, at {sample_size} px (train it with --config demo). The source folder
    is never written to. Files that are not usable photos are listed with a reason
    in skipped.csv.

    \b
    Example:
        catsdogs prepare                              # the built-in sample
        catsdogs prepare ~/PetImages --size 160 --out prepared
        catsdogs prepare ~/PetImages --workers 4 --quiet
        catsdogs prepare digits/ --size 28 --color gray   # for --config lenet
    """
    from data_prep.prepare import prepare as prepare_dataset

    if source is None:
        source = sample_folder()
        size = size or SAMPLE_SIZE
        click.echo(f"No SOURCE given: using the built-in sample ({source}).")
    size = size or PREPARE_SIZE
    bar = ProgressLine() if not quiet and ProgressLine.wanted() else None
    try:
        result = prepare_dataset(source, out, size, policy, force=force,
                                 test_fraction=test_fraction, seed=seed, workers=workers,
                                 progress=bar, channels=1 if color == "gray" else 3)
    finally:
        if bar is not None:
            bar.close()
    total = sum(result.counts.values())
    if result.reused:
        click.echo(f"{out} is already prepared from this source with these options: reused.")
    else:
        rate = (total + len(result.skipped)) / max(result.seconds, 1e-9)
        shape = f"{size}x{size}, {policy}" + (", gray" if color == "gray" else "")
        click.echo(f"Prepared {total:,} photos ({shape}) in "
                   f"{result.seconds:.1f} s ({rate:,.0f} files/s, {result.workers} "
                   f"worker{'s' if result.workers != 1 else ''}) -> {out}")
    for name in result.classes:
        click.echo(f"  {name:<12} {result.counts[name]:>7,}")
    if result.test_count:
        click.echo(f"  test split   {result.test_count:>7,} (not used by train)")
    if result.skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in result.skipped_by_reason.items())
        click.echo(f"Skipped {len(result.skipped):,}: {reasons} (see {out}/skipped.csv)")
        for skip in result.skipped[:5]:
            detail = f" ({skip.detail})" if skip.detail else ""
            click.echo(f"  {skip.path}: {skip.reason}{detail}")
        if len(result.skipped) > 5:
            click.echo(f"  ... and {len(result.skipped) - 5:,} more")
    else:
        click.echo("Skipped 0.")


class ProgressLine:
    """A one-line progress bar on stderr: stage, bar, count, files/s and time left.

    Drawn only when stderr is a terminal; redrawn at most ten times a second.
    """

    def __init__(self, width: int = 24) -> None:
        self.width = width
        self.stage = ""
        self.started = 0.0
        self.drawn_at = 0.0
        self.shown = False

    @staticmethod
    def wanted() -> bool:
        import sys

        return bool(getattr(sys.stderr, "isatty", lambda: False)())

    def __call__(self, stage: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.started, self.drawn_at = stage, now, 0.0
        if done < total and now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        elapsed = now - self.started
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        if elapsed > 0.2 and done:  # too early to say before that
            rate = done / elapsed
            left = int((total - done) / rate)
            speed = f"{rate:,.0f} files/s  ETA {left // 60}:{left % 60:02d}"
        else:
            speed = "- files/s  ETA -:--"
        line = f"{stage:<9} [{bar}] {done:>{len(f'{total:,}')},}/{total:,}  {speed}"
        click.echo(f"\r{line}\x1b[K", nl=False, err=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)


@cli.command()
@setting_options("summary")
def summary(print_config: bool, **settings: Any) -> None:
    """Print the model's layer table and parameter counts, with no data and no training.

    \b
    Example:
        catsdogs summary                       # the default recipe's model
        catsdogs summary --size 300 --blocks 1 --filters 10 --kernel-size 5 \\
            --dense 0                          # the classic Keras article's model: 219,801
        catsdogs summary --config article      # the same, from a built-in recipe
        catsdogs summary --size 28 --channels 1 --classes 10 --blocks 2 \\
            --filters 6,16 --kernel-size 5 --padding same,valid --pool avg \\
            --activation sigmoid --dense 120,84 --dropout 0 --no-batch-norm
                                               # LeNet on 28x28 gray digits: 61,706
        catsdogs summary --config lenet        # the same, from a built-in recipe
    """
    from catsdogs.model import build_model, summary_lines

    model_config, train_config, _ = configs_from(settings)
    if print_config:
        click.echo(recipe_text("summary", model_config, train_config), nl=False)
        return
    for line in summary_lines(build_model(model_config)):
        click.echo(line)


@cli.command()
@click.option("--data", "-d", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Prepared dataset folder (from 'catsdogs prepare').")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="Folder to save the trained model to.")
@setting_options("train")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run of --out from its last checkpoint, with its "
                   "options (other model and training options are ignored).")
@click.option("--force", is_flag=True,
              help="Replace a model already saved in --out (and discard an interrupted run).")
@click.option("--tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write TensorBoard logs (each epoch's loss, accuracy and learning "
                   "rate) under this folder; view them with 'tensorboard --logdir DIR'. "
                   "Needs TensorFlow and the tensorboard package.")
@click.pass_context
@help_with_defaults
def train(ctx: click.Context, data: Path, out: Path, resume: bool, force: bool,
          tensorboard: Path | None, print_config: bool, **settings: Any) -> None:
    """Build the model, print its parameter summary, and train it on a prepared dataset.

    With no options this is the default recipe: {blocks} blocks with batch normalization,
    augmentation, AdamW with a cosine schedule and label smoothing, {epochs} epochs (at most
    {minutes:g} minutes: on a slower machine the schedule is fitted to the epochs that fit),
    validating on {validation:.0%} of the photos (--validation-split). The weights of the last epoch
    (--keep best, or --patience: of the best epoch by --monitor) are saved to --out as
    model.keras, with model.json, history.csv and curves.png. Ctrl-C stops after saving
    that epoch so far; --resume continues from the last finished epoch. --config FILE
    reads the settings from a TOML recipe; --print-config prints one.

    \b
    Example:
        catsdogs train                                   # the default recipe
        catsdogs train --epochs 60 --patience 10         # keeps the best epoch
        catsdogs train --keep best --monitor val_accuracy
        catsdogs train --blocks 1 --filters 10 --kernel-size 5 --dense 0 \\
            --no-augment --dropout 0                     # the classic article's model
        catsdogs train --config article --epochs 30
        catsdogs train --epochs 60 --print-config > recipe.toml
        catsdogs train --resume                          # after Ctrl-C
        catsdogs train --backbone mobilenet_v3_small --epochs 10 \\
            --fine-tune-epochs 5                         # transfer learning
        catsdogs train --class-weight balanced --tensorboard logs
    """
    import time

    started = time.perf_counter()  # a --budget counts from here, loading Keras included
    # The image size and channels come from the dataset: train checks the blocks fit them.
    model_config, train_config, _ = configs_from(settings, check_size=False)
    if print_config:
        click.echo(recipe_text("train", model_config, train_config), nl=False)
        return
    note_unused_settings(ctx, model_config.backbone)
    if not resume:
        note_inexact_seed(ctx, train_config.budget)
    if train_config.device == "cpu":
        from catsdogs.backend import hide_gpus

        hide_gpus()
    if train_config.budget and ctx.get_parameter_source("epochs").name == "DEFAULT":
        # --budget alone: the time decides the epochs
        train_config = dataclasses.replace(train_config, epochs=10_000)
    limited = not resume and default_length(ctx, model_config)
    time_limit = config.DEFAULT_TIME_LIMIT if limited else 0.0
    if time_limit:
        train_config = dataclasses.replace(train_config, budget=time_limit)
    progress = TrainProgress(planned_epochs(model_config.backbone, train_config.epochs,
                                            train_config.fine_tune_epochs), train_config.budget,
                             time_limit=time_limit)
    if model_config.backbone != "none" and train_config.fine_tune_epochs:
        progress.fine_tune_from = train_config.epochs + 1
    if resume:
        resumed = resume_banner(out)
        time_limit = resumed_time_limit(resumed)
        progress.total_epochs = progress.requested = resumed.epochs
        progress.time_limit = time_limit
    from catsdogs.train import train as train_model  # loads Keras: after hide_gpus

    result = train_model(data, out, model_config, train_config, force=force, resume=resume,
                         on_start=progress.on_start, on_epoch=progress.on_epoch,
                         on_batch=progress.on_batch if progress.terminal else None,
                         on_data=report_balance, tensorboard=tensorboard,
                         on_plan=progress.on_plan, started=started)
    progress.clear()
    report_training(result, data, out, train_config.patience, time_limit=time_limit,
                    default_epochs=progress.requested, said_cut=bool(progress.planned))


def note_unused_settings(ctx: click.Context, backbone: str) -> None:
    """Say (on stderr) which given settings this run does not use: the backbone options
    without --backbone, and a recipe's settings that train takes from the prepared dataset."""
    if backbone == "none":
        from click.core import ParameterSource

        for name in ("weights", "fine_tune_layers", "fine_tune_learning_rate"):
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                click.echo(f"note: --{name.replace('_', '-')} is only used with --backbone",
                           err=True)
    for key, value, path in ignored_settings(ctx):
        click.echo(f"note: {path}: {key} = {value!r} is not used: train takes it from the "
                   "prepared dataset", err=True)


def note_inexact_seed(ctx: click.Context, budget: float) -> None:
    """Say (on stderr) that a --seed given on the command line does not repeat a run with a
    budget: its epochs and schedule follow the measured time (benchmarks/RESULTS.md: one
    seed twice under --budget 5m, the same epochs, 91.0% and 90.25%)."""
    if budget and ctx.get_parameter_source("seed").name == "COMMANDLINE":
        click.echo("note: --seed repeats a run exactly only with its epochs fixed: under "
                   "--budget they follow this machine's speed (give --epochs without --budget "
                   "to repeat a run)", err=True)


def default_length(ctx: click.Context, model_config: Any) -> bool:
    """Whether the run's length is the default one, which keeps to ``DEFAULT_TIME_LIMIT``:
    neither --epochs nor --budget given (on the command line or by a --config recipe), on one
    machine (a time limit of each worker's own could stop them at different epochs), without
    a pretrained backbone (whose two stages a time budget does not plan)."""
    from catsdogs.distribute import read_tf_config

    chosen = any(ctx.get_parameter_source(name).name != "DEFAULT"
                 for name in ("epochs", "budget"))
    return not chosen and model_config.backbone == "none" and read_tf_config() is None


def resumed_time_limit(run: ResumedRun) -> float:
    """The time limit (seconds) of an interrupted run of the default length, 0 for any other
    run. The checkpoint tells it by the run's length: the default epochs, no backbone, and
    ``DEFAULT_TIME_LIMIT`` as its budget."""
    default = run.backbone == "none" and is_time_limited_default(run.epochs, run.budget)
    return run.budget if default else 0.0


ENGINE_HELP = ("onnx: model.onnx with onnxruntime (fast start, no TensorFlow); keras: "
               "model.keras; auto: onnx when the model folder has it.")


TTA_HELP = ("Test-time augmentation: average the probabilities of six views of each photo: "
            "the photo, its central 90% and 80% (resized back), and their mirror images "
            "(six times the model work). --no-tta: the photo alone.")


def tta_option(help_text: str) -> Callable[[Callable], Callable]:
    return click.option("--tta/--no-tta", default=TTA_DEFAULT, show_default=True,
                        help=help_text)


def model_option(function: Callable) -> Callable:
    return click.option("--model", "-m", "model_dir", type=click.Path(path_type=Path),
                        default=DEFAULT_MODEL, show_default=True,
                        help="Trained model folder.")(function)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of lines.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV: path, label, probability, one column per class, error.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Two-class models: say the second class when its probability is above "
                   "this (default: the more probable class).")
@click.option("--top", type=click.IntRange(1, 1000), default=None,
              help="Also show the K most probable classes of each photo.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Photos decoded and predicted together.")
@click.option("--engine", type=click.Choice(["auto", "onnx", "keras"]), default="auto",
              show_default=True, help=ENGINE_HELP)
@tta_option(TTA_HELP)
def predict(paths: tuple[str, ...], model_dir: Path, as_json: bool, as_csv: bool,
            threshold: float | None, top: int | None, batch_size: int, engine: str,
            tta: bool) -> None:
    """Say which class each photo is, and how sure the model is.

    PATHS are photos, folders of photos (searched recursively) or glob patterns
    ('photos/**/*.jpg', quoted or not). Photos are streamed in batches, so any
    number of them takes the same memory. Exit code 1 when a photo could not be
    read (the others are still predicted).

    \b
    Example:
        catsdogs predict photo.jpg
        catsdogs predict holiday/ 'more/*.png' --json > answers.json
        catsdogs predict holiday/ --csv --threshold 0.8 > answers.csv
        catsdogs predict photo.jpg --no-tta
    """
    from catsdogs.predict import Predictor
    from data_prep.discover import printable

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    predictor = Predictor(model_dir, engine=engine)
    if predictor.note:
        click.echo(f"note: {predictor.note}", err=True)
    classes = predictor.classes
    if threshold is not None and len(classes) != 2:
        raise click.BadParameter(f"the model has {len(classes)} classes; --threshold needs "
                                 "two (use --top)", param_hint="'--threshold'")
    top = min(top, len(classes)) if top else 0
    output = PredictionOutput(classes, "csv" if as_csv else "json" if as_json else "lines", top)
    failed = 0
    for prediction in predictor.predict_paths(paths, batch_size=batch_size,
                                              threshold=threshold, top=top, tta=tta):
        if prediction.error is not None:
            failed += 1
            click.echo(f"error: {printable(prediction.path)}: {prediction.error}", err=True)
        output.write(prediction)
    output.close()
    if failed:
        raise SystemExit(1)


class PredictionOutput:
    """Prints predictions as they come: lines, one JSON array, or CSV (``style``)."""

    def __init__(self, classes: list[str], style: str, top: int) -> None:
        self.classes, self.style, self.top = classes, style, top
        self.count = 0
        self.writer: Any = None
        if style == "csv":
            import csv
            import sys

            self.writer = csv.writer(sys.stdout, lineterminator="\n")
            self.writer.writerow(["path", "label", "probability", *classes, "error"])
        elif style == "json":
            click.echo("[", nl=False)

    def write(self, prediction: Any) -> None:
        from data_prep.discover import printable

        shown = printable(prediction.path)  # a name that is not UTF-8 gets \xNN escapes
        if self.style == "csv":
            if prediction.error is not None:
                self.writer.writerow([shown, "", "", *[""] * len(self.classes),
                                      prediction.error])
            else:
                self.writer.writerow([shown, prediction.label, prediction.probability,
                                      *[prediction.probabilities[name] for name in self.classes],
                                      ""])
        elif self.style == "json":
            text = json.dumps(prediction.to_dict(), indent=2).replace("\n", "\n  ")
            click.echo(("\n  " if self.count == 0 else ",\n  ") + text, nl=False)
        elif prediction.error is None:
            line = f"{shown}: {prediction.label} ({prediction.probability:.1%})"
            if self.top:
                line += "  top: " + ", ".join(f"{name} {p:.1%}" for name, p in prediction.top)
            click.echo(line)
        self.count += 1

    def close(self) -> None:
        if self.style == "json":
            click.echo("\n]" if self.count else "]")


def percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:6.1%}"


@cli.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@model_option
@click.option("--out", "-o", type=click.Path(path_type=Path), default="evaluation",
              show_default=True, help="Folder to write metrics.json, predictions.csv, "
                                      "confusion.png and mistakes.png to.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Two-class models: say the second class when its probability is above "
                   "this (as in predict).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Photos decoded and predicted together.")
@click.option("--engine", type=click.Choice(["auto", "onnx", "keras"]), default="auto",
              show_default=True, help=ENGINE_HELP)
@click.option("--force", is_flag=True, help="Replace an evaluation already in --out.")
@tta_option("Measure predict's answer with test-time augmentation (six views of each photo "
            "averaged), and also report the photo alone's figures, from the same pass. "
            "--no-tta: the photo alone only.")
def evaluate(data: Path | None, model_dir: Path, out: Path, threshold: float | None,
             batch_size: int, engine: str, force: bool, tta: bool) -> None:
    """Measure the model on labelled photos it has not trained on.

    DATA is a folder of labelled photos (any layout prepare accepts) or a prepared
    dataset, of which the test split is used (prepare --test-fraction). Default:
    ./prepared. Prints the accuracy of predict's answer (six views of each photo
    averaged, unless --no-tta) and of the photo alone, per-class precision, recall
    and F1, the confusion matrix, ROC AUC and log loss, and writes them to --out
    with every prediction and pictures of the confusion matrix and the worst
    mistakes.

    \b
    Example:
        catsdogs evaluate ~/held_out_photos
        catsdogs evaluate prepared --model model --out evaluation --force
        catsdogs evaluate prepared --no-tta
    """
    from catsdogs.evaluate import evaluate as evaluate_model

    data = data if data is not None else Path(DEFAULT_DATA)
    result = evaluate_model(data, model_dir, out, engine=engine, batch_size=batch_size,
                            threshold=threshold, force=force, tta=tta)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for path, reason in result.unreadable[:5]:
        click.echo(f"error: {path}: {reason}", err=True)
    if len(result.unreadable) > 5:
        click.echo(f"error: ... and {len(result.unreadable) - 5} more unreadable photos",
                   err=True)
    metrics = result.metrics
    classes = result.classes
    click.echo(f"Evaluated {metrics['n']:,} photos from {data} ({result.engine}; "
               f"{metrics['views']})")
    click.echo(f"accuracy  {metrics['accuracy']:.4f}")
    if metrics.get("balanced_accuracy") is not None:
        click.echo(f"balanced accuracy {metrics['balanced_accuracy']:.4f} (the mean of the "
                   "classes' recalls)")
    auc = metrics["roc_auc"]
    click.echo(f"ROC AUC   {'n/a (one class present)' if auc is None else f'{auc:.4f}'}")
    click.echo(f"log loss  {metrics['log_loss']:.4f}")
    if metrics.get("photo_alone"):
        alone = metrics["photo_alone"]
        click.echo(f"the photo alone (--no-tta): accuracy {alone['accuracy']:.4f}   "
                   f"log loss {alone['log_loss']:.4f}")
    width = max(8, *(len(name) for name in classes))
    click.echo("")
    click.echo(f"{'class':<{width}}  precision  recall     f1  photos")
    matrix = metrics["confusion_matrix"]
    for index, name in enumerate(classes):
        click.echo(f"{name:<{width}}     {percent(metrics['precision'][name])}  "
                   f"{percent(metrics['recall'][name])} {percent(metrics['f1'][name])}  "
                   f"{sum(matrix[index]):>6,}")
    click.echo("")
    click.echo("confusion matrix (rows: true class, columns: predicted)")
    cell = max(7, *(len(name) for name in classes))
    click.echo(" " * width + "  " + "".join(f"{name:>{cell}}" for name in classes))
    for index, name in enumerate(classes):
        click.echo(f"{name:<{width}}  " + "".join(f"{n:>{cell},}" for n in matrix[index]))
    click.echo("")
    click.echo(f"Wrote {', '.join(result.files)} to {out}")


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@model_option
@click.option("--out", "-o", type=click.Path(path_type=Path), default="visualization",
              show_default=True, help="Folder to write the PNGs to.")
@click.option("--force", is_flag=True, help="Replace a visualization already in --out.")
def visualize(image: Path, model_dir: Path, out: Path, force: bool) -> None:
    """Draw what the network sees in IMAGE, as PNGs.

    The feature maps of each convolution block, the first layer's learned filters,
    and a heat map of the regions that drove the decision (occlusion sensitivity:
    how much the answer drops when a grey square hides each part of the photo).

    \b
    Example:
        catsdogs visualize photo.jpg
        catsdogs visualize photo.jpg --model model --out why_dog --force
    """
    from catsdogs.visualize import visualize as draw
    from data_prep.discover import printable

    result = draw(image, model_dir, out, force=force)
    # the maps are of the photo alone, so is this answer (predict --no-tta's)
    click.echo(f"{printable(image)}: {result.label} ({result.probability:.1%}, the photo alone)")
    click.echo(f"Wrote {', '.join(result.files)} to {out}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def info(as_json: bool) -> None:
    """Print the versions of catsdogs, Keras, its backend, OpenCV and onnxruntime, and the
    devices found (GPU names, or CPU): what a bug report needs.

    \b
    Example:
        catsdogs info
        KERAS_BACKEND=jax catsdogs info --json
    """
    from catsdogs.info import collect

    facts = collect()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        click.echo(f"{key + ':':<23}{value if value is not None else 'not installed'}")


@cli.command()
@model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. 0.0.0.0 opens the model to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (printed).")
@click.option("--engine", type=click.Choice(["auto", "onnx", "keras"]), default="auto",
              show_default=True, help=ENGINE_HELP)
@click.option("--max-upload", type=click.FloatRange(0.001, 1024), default=20, show_default=True,
              help="Largest request body in MB; a larger upload gets 413.")
@click.option("--max-queue", type=click.IntRange(0, 100_000), default=16, show_default=True,
              help="Requests that may wait for a worker; more get 503 with Retry-After.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Threads decoding and predicting photos.  [default: CPU count, at most 4]")
def serve(model_dir: Path, host: str, port: int, engine: str, max_upload: float,
          max_queue: int, workers: int | None) -> None:
    """Serve the model: a page to try it on photos, and a JSON API.

    GET / is a page where you pick or drop photos and see each one's class,
    probability and heat map. POST /predict takes photos (form fields named
    'file', or one image/* body) and answers the JSON of predict --json.
    GET /health and GET /metrics (Prometheus) are for monitoring. Ctrl-C or
    SIGTERM stops it after the requests in progress. See docs/serve.md.

    \b
    Example:
        catsdogs serve --model model
        curl -F file=@photo.jpg 'http://127.0.0.1:8000/predict?top=2'
    """
    from catsdogs.serve import DEFAULT_WORKERS, MEGABYTE, Limits, open_server

    limits = Limits(max_upload=round(max_upload * MEGABYTE), max_queue=max_queue,
                    workers=workers or DEFAULT_WORKERS)
    server = open_server(model_dir, host, port, engine=engine, limits=limits)
    if server.note:
        click.echo(f"note: {server.note}", err=True)
    if server.open_to_network:
        click.echo(f"warning: listening on {host}: the model is open to the network",
                   err=True)
    click.echo(f"Serving {model_dir} ({server.engine}; {', '.join(server.classes)}) at "
               f"{server.url} - press Ctrl-C to stop")
    if not server.run():
        click.echo("Stopped at once; requests in progress were dropped.", err=True)
        raise SystemExit(130)
    click.echo("Stopped.")
