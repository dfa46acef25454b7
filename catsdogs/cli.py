"""The ``catsdogs`` command line: each command parses options, calls one core function,
prints the result. Keras and TensorFlow are imported inside command bodies only, so that
``catsdogs --help`` stays instant."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click

from catsdogs import __version__
from catsdogs.config import (
    ACTIVATIONS,
    BATCH_NORM_AUTO_BLOCKS,
    DEVICES,
    HEADS,
    JIT_COMPILE,
    LR_SCHEDULES,
    MONITORS,
    OPTIMIZERS,
    PADDINGS,
    PRECISIONS,
)

DEFAULT_DATA = "prepared"
DEFAULT_MODEL = "model"


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
    """The built-in sample photos shipped with catsdogs."""
    return Path(str(resources.files("catsdogs") / "sample_data"))


@cli.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Folder to write the prepared dataset to.")
@click.option("--size", type=click.IntRange(8, 2048), default=128, show_default=True,
              help="Side in pixels of the square images the photos are resized to.")
@click.option("--resize", "policy", type=click.Choice(["stretch", "crop", "pad"]),
              default="stretch", show_default=True,
              help="stretch: squash to a square; crop: keep the centre square; "
                   "pad: keep the whole photo with black bars.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Share of photos set aside as a test split "
                                      "(stratified, seeded); train never sees them.")
@click.option("--seed", type=int, default=1337, show_default=True,
              help="Seed for the test split.")
@click.option("--force", is_flag=True, help="Replace a different prepared dataset in --out.")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=None,
              help="Processes decoding photos in parallel.  [default: all cores, "
                   "one per 64 photos at most]")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar (it is only drawn on a terminal anyway).")
def prepare(source: Path | None, out: Path, size: int, policy: str, test_fraction: float,
            seed: int, force: bool, workers: int | None, quiet: bool) -> None:
    """Find, check and resize the photos in SOURCE into a training-ready dataset.

    SOURCE holds one sub-folder per class (cats/, dogs/; any names) or Kaggle-style
    files named cat.1.jpg, dog.1.jpg. Without SOURCE, the built-in sample of 80
    photos is used. The source folder is never written to. Files that are not usable
    photos are listed with a reason in skipped.csv.

    \b
    Example:
        catsdogs prepare                              # the built-in sample
        catsdogs prepare ~/PetImages --size 160 --out prepared
        catsdogs prepare ~/PetImages --workers 4 --quiet
    """
    from data_prep.prepare import prepare as prepare_dataset

    if source is None:
        source = sample_folder()
        click.echo(f"No SOURCE given: using the built-in sample ({source}).")
    bar = ProgressLine() if not quiet and ProgressLine.wanted() else None
    try:
        result = prepare_dataset(source, out, size, policy, force=force,
                                 test_fraction=test_fraction, seed=seed, workers=workers,
                                 progress=bar)
    finally:
        if bar is not None:
            bar.close()
    total = sum(result.counts.values())
    if result.reused:
        click.echo(f"{out} is already prepared from this source with these options: reused.")
    else:
        rate = (total + len(result.skipped)) / max(result.seconds, 1e-9)
        click.echo(f"Prepared {total:,} photos ({size}x{size}, {policy}) in "
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


def model_options(function: Callable) -> Callable:
    """The options that describe the network, shared by ``train`` and ``summary``.

    The defaults are the default recipe's network; ``--blocks 1 --filters 10 --kernel-size 5
    --dense 0`` (with the default valid padding and Flatten head, and batch normalization
    off below 3 blocks) is the classic article's.
    """
    options = [
        click.option("--blocks", type=click.IntRange(1, 10), default=5, show_default=True,
                     help="Number of Conv2D + MaxPooling2D blocks."),
        click.option("--filters", type=click.IntRange(1, 1024), default=16, show_default=True,
                     help="Filters of the first Conv2D; each later block doubles them."),
        click.option("--kernel-size", type=click.IntRange(1, 15), default=3, show_default=True,
                     help="Side of the square convolution kernels."),
        click.option("--pool-size", type=click.IntRange(1, 8), default=2, show_default=True,
                     help="Side of the max-pooling windows."),
        click.option("--padding", type=click.Choice(PADDINGS), default="valid",
                     show_default=True, help="Convolution padding."),
        click.option("--activation", type=click.Choice(ACTIVATIONS), default="relu",
                     show_default=True, help="Activation of the hidden layers."),
        click.option("--batch-norm/--no-batch-norm", default=None,
                     help="BatchNormalization after each Conv2D "
                          f"[default: on for {BATCH_NORM_AUTO_BLOCKS} blocks or more]."),
        click.option("--head", type=click.Choice(HEADS), default="flatten", show_default=True,
                     help="flatten: Flatten the last feature map; gap: global average "
                          "pooling (one value per filter)."),
        click.option("--dense", default="0", show_default=True,
                     help="Comma-separated units of hidden Dense layers; 0 for none."),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.3,
                     show_default=True,
                     help="Dropout rate before each Dense layer and the output; 0 for none."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def model_config_from(size: int, num_classes: int, options: dict[str, Any]):
    from catsdogs.config import ModelConfig, parse_dense

    return ModelConfig(
        image_size=size,
        num_classes=num_classes,
        blocks=options["blocks"],
        filters=options["filters"],
        kernel_size=options["kernel_size"],
        pool_size=options["pool_size"],
        padding=options["padding"],
        activation=options["activation"],
        dense=parse_dense(options["dense"]),
        dropout_rate=options["dropout"],
        batch_norm=options["batch_norm"],
        head=options["head"],
    )


def dense_option_check(function: Callable) -> Callable:
    """Report a malformed --dense as a usage error (exit 2), like every other bad option."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from catsdogs.config import parse_dense

        try:
            parse_dense(kwargs["dense"])
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--dense'") from None
        return function(*args, **kwargs)

    return wrapper


@cli.command()
@model_options
@click.option("--size", type=click.IntRange(8, 2048), default=128, show_default=True,
              help="Side in pixels of the square input images.")
@click.option("--classes", "num_classes", type=click.IntRange(2, 1000), default=2,
              show_default=True, help="Number of classes.")
@dense_option_check
def summary(size: int, num_classes: int, **options: Any) -> None:
    """Print the model's layer table and parameter counts, with no data and no training.

    \b
    Example:
        catsdogs summary                       # the default recipe's model
        catsdogs summary --size 300 --blocks 1 --filters 10 --kernel-size 5 \\
            --dense 0                          # the classic article's model: 219,801
    """
    from catsdogs.model import build_model, summary_lines

    model = build_model(model_config_from(size, num_classes, options))
    for line in summary_lines(model):
        click.echo(line)


@cli.command()
@click.option("--data", "-d", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Prepared dataset folder (from 'catsdogs prepare').")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="Folder to save the trained model to.")
@model_options
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random flips, rotations, zooms, shifts and contrast while training "
                   "(never at prediction).")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=80, show_default=True,
              help="Passes over the training photos.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Photos per training step (per GPU, or per worker, when training is "
                   "distributed).")
@click.option("--validation-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.2, show_default=True,
              help="Share of photos held out (stratified, seeded) to validate on.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw",
              show_default=True, help="Optimizer.")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=3e-3,
              show_default=True, help="Peak learning rate.")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="cosine",
              show_default=True,
              help="constant; cosine (warm-up, then decay to 1%); step (÷10 at 1/2 and 3/4 "
                   "of the epochs); plateau (÷5 after 3 epochs without improvement).")
@click.option("--warmup-epochs", type=click.IntRange(0, 1000), default=2, show_default=True,
              help="Epochs of linear warm-up for the cosine schedule.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True,
              help="Decoupled weight decay; 0 for none.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Label smoothing of the cross-entropy loss.")
@click.option("--monitor", type=click.Choice(MONITORS), default="val_loss",
              show_default=True, help="Validation metric that picks the best epoch.")
@click.option("--patience", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Stop after this many epochs without a better --monitor; 0 never stops.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: a GPU when there is one; cpu: the CPU even then.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
              show_default=True, help="auto: mixed float16 on a GPU, float32 on the CPU.")
@click.option("--jit-compile", type=click.Choice(JIT_COMPILE), default="auto",
              show_default=True,
              help="XLA compilation of the training step; auto: Keras decides (off on a "
                   "CPU with TensorFlow).")
@click.option("--seed", type=int, default=1337, show_default=True,
              help="Seed for the split, the shuffling, augmentation and the initial weights.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run of --out from its last checkpoint, with its "
                   "options (other model and training options are ignored).")
@click.option("--force", is_flag=True,
              help="Replace a model already saved in --out (and discard an interrupted run).")
@dense_option_check
def train(data: Path, out: Path, augment: bool, epochs: int, batch_size: int,
          validation_split: float, optimizer: str, learning_rate: float, lr_schedule: str,
          warmup_epochs: int, weight_decay: float, label_smoothing: float, monitor: str,
          patience: int, device: str, precision: str, jit_compile: str, seed: int,
          resume: bool, force: bool, **options: Any) -> None:
    """Build the model, print its parameter summary, and train it on a prepared dataset.

    With no options this is the default recipe: 5 blocks with batch normalization,
    augmentation, AdamW with a cosine schedule and label smoothing, 80 epochs. The
    weights of the best epoch by --monitor are saved to --out as model.keras, with
    model.json, history.csv and curves.png. Ctrl-C stops after saving the best epoch so
    far; --resume continues from the last finished epoch.

    \b
    Example:
        catsdogs train                                   # the default recipe
        catsdogs train --epochs 60 --patience 10
        catsdogs train --blocks 1 --filters 10 --kernel-size 5 --dense 0 \\
            --no-augment --dropout 0                     # the classic article's model
        catsdogs train --resume                          # after Ctrl-C
    """
    import sys

    from catsdogs.backend import training_hint
    from catsdogs.config import TrainConfig
    from catsdogs.export import skipped_note
    from catsdogs.model import summary_lines
    from catsdogs.train import train as train_model

    model_config = model_config_from(128, 2, options)
    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, validation_split=validation_split,
        learning_rate=learning_rate, optimizer=optimizer, weight_decay=weight_decay,
        lr_schedule=lr_schedule, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, augment=augment, monitor=monitor, patience=patience,
        device=device, precision=precision, jit_compile=jit_compile, seed=seed,
    )
    terminal = sys.stdout.isatty()
    total_epochs = [epochs]

    def on_start(model: Any, device_name: str) -> None:
        for line in summary_lines(model):
            click.echo(line)
        click.echo(f"Training on {device_name}.")
        if hint := training_hint(device_name):  # an NVIDIA driver, but no GPU in use
            click.echo(hint, err=True)

    def on_batch(step: int, steps: int, logs: dict[str, float]) -> None:
        width = 30
        done = int(width * step / steps) if steps else width
        click.echo(f"\r  [{'=' * done}{'.' * (width - done)}] {step}/{steps}"
                   f"  loss {logs.get('loss', float('nan')):.4f}"
                   f"  accuracy {logs.get('accuracy', float('nan')):.4f}", nl=False)

    def on_epoch(row: dict[str, Any]) -> None:
        if terminal:
            click.echo("\r\033[K", nl=False)  # clear the progress bar
        click.echo(
            f"epoch {row['epoch']:>3}/{total_epochs[0]}"
            f"  loss {row.get('loss', float('nan')):.4f}"
            f"  accuracy {row.get('accuracy', float('nan')):.4f}"
            f"  val_loss {row.get('val_loss', float('nan')):.4f}"
            f"  val_accuracy {row.get('val_accuracy', float('nan')):.4f}"
            f"  {row['seconds']:.1f}s{'  *' if row.get('best') else ''}"
        )
        sys.stdout.flush()  # one line per epoch, as it happens, also into a pipe or a file

    if resume:
        from catsdogs.train import checkpoint_folder, read_checkpoint

        state = read_checkpoint(checkpoint_folder(out))
        total_epochs[0] = int(state["training"]["epochs"])
        click.echo(f"Resuming the interrupted run after epoch {state['epochs_done']} "
                   f"(its options are used).")
    result = train_model(data, out, model_config, train_config, force=force, resume=resume,
                         on_start=on_start, on_epoch=on_epoch,
                         on_batch=on_batch if terminal else None)
    if terminal:
        click.echo("\r\033[K", nl=False)
    best = result.best
    if result.interrupted:
        click.echo(f"Interrupted after {result.epochs_run} finished epoch(s).", err=True)
    if not result.saved:
        click.echo("No epoch finished: nothing saved.", err=True)
        raise SystemExit(130)
    if result.stopped_early:
        click.echo(f"Stopped early: no better {result.monitor} for {patience} epochs.")
    click.echo(
        f"Best epoch {result.best_epoch} by {result.monitor}: "
        f"val_accuracy {best.get('val_accuracy', 0):.4f}, "
        f"val_loss {best.get('val_loss', 0):.4f} ({result.num_train:,} training photos, "
        f"{result.num_validation:,} validation, {result.seconds:.0f} s)"
    )
    if result.worker_index == 0:
        click.echo(f"Saved model to {out} (model.keras, model.json, history.csv, curves.png)")
        if note := skipped_note(out):  # e.g. no ONNX exporter on this backend
            click.echo(note)
    else:  # (#7) multi-worker training: only the chief (worker 0) writes --out
        click.echo(f"Worker {result.worker_index} of {result.num_workers} done; the chief "
                   "(worker 0) saved the model, nothing was written here.")
    if result.interrupted:
        if result.checkpoint is not None:
            click.echo(f"The best model so far is in {out}. Continue training with: "
                       f"catsdogs train --data {data} --out {out} --resume", err=True)
        raise SystemExit(130)


ENGINE_HELP = ("onnx: model.onnx with onnxruntime (fast start, no TensorFlow); keras: "
               "model.keras; auto: onnx when the model folder has it.")


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
def predict(paths: tuple[str, ...], model_dir: Path, as_json: bool, as_csv: bool,
            threshold: float | None, top: int | None, batch_size: int, engine: str) -> None:
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
    failed = 0
    count = 0
    writer = None
    if as_csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", "probability", *classes, "error"])
    elif as_json:
        click.echo("[", nl=False)
    for prediction in predictor.predict_paths(paths, batch_size=batch_size,
                                              threshold=threshold, top=top):
        shown = printable(prediction.path)  # a name that is not UTF-8 gets \xNN escapes
        if prediction.error is not None:
            failed += 1
            click.echo(f"error: {shown}: {prediction.error}", err=True)
        if writer is not None:
            if prediction.error is not None:
                writer.writerow([shown, "", "", *[""] * len(classes), prediction.error])
            else:
                writer.writerow([shown, prediction.label, prediction.probability,
                                 *[prediction.probabilities[name] for name in classes], ""])
        elif as_json:
            text = json.dumps(prediction.to_dict(), indent=2).replace("\n", "\n  ")
            click.echo(("\n  " if count == 0 else ",\n  ") + text, nl=False)
        elif prediction.error is None:
            line = f"{shown}: {prediction.label} ({prediction.probability:.1%})"
            if top:
                line += "  top: " + ", ".join(f"{name} {p:.1%}" for name, p in prediction.top)
            click.echo(line)
        count += 1
    if as_json:
        click.echo("\n]" if count else "]")
    if failed:
        raise SystemExit(1)


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
def evaluate(data: Path | None, model_dir: Path, out: Path, threshold: float | None,
             batch_size: int, engine: str, force: bool) -> None:
    """Measure the model on labelled photos it has not trained on.

    DATA is a folder of labelled photos (any layout prepare accepts) or a prepared
    dataset, of which the test split is used (prepare --test-fraction). Default:
    ./prepared. Prints accuracy, per-class precision, recall and F1, the confusion
    matrix, ROC AUC and log loss, and writes them to --out with every prediction
    and pictures of the confusion matrix and the worst mistakes.

    \b
    Example:
        catsdogs evaluate ~/held_out_photos
        catsdogs evaluate prepared --model model --out evaluation --force
    """
    from catsdogs.evaluate import evaluate as evaluate_model

    data = data if data is not None else Path(DEFAULT_DATA)
    result = evaluate_model(data, model_dir, out, engine=engine, batch_size=batch_size,
                            threshold=threshold, force=force)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for path, reason in result.unreadable[:5]:
        click.echo(f"error: {path}: {reason}", err=True)
    if len(result.unreadable) > 5:
        click.echo(f"error: ... and {len(result.unreadable) - 5} more unreadable photos",
                   err=True)
    metrics = result.metrics
    classes = result.classes
    click.echo(f"Evaluated {metrics['n']:,} photos from {data} ({result.engine})")
    click.echo(f"accuracy  {metrics['accuracy']:.4f}")
    auc = metrics["roc_auc"]
    click.echo(f"ROC AUC   {'n/a (one class present)' if auc is None else f'{auc:.4f}'}")
    click.echo(f"log loss  {metrics['log_loss']:.4f}")
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
    click.echo(f"{printable(image)}: {result.label} ({result.probability:.1%})")
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
