"""``train(data, out, model_config, train_config)``: fit, keep the best (or last) epoch,
save the model.

The run reads as its steps: :func:`load_resume_state` → :func:`start_run` (configurations
and split) → :func:`make_batches` → :func:`class_balance` → :func:`build_and_compile` →
:func:`make_callbacks` → :func:`fit_model` (→ :func:`fine_tune`, the second stage of a
pretrained backbone) → :func:`catsdogs.model_folder.write_model_folder`, all inside one
:func:`data_prep.safeio.output_folder` (the lock of ``out``, built aside, published whole).
While it runs, a checkpoint (weights, optimizer state, epoch, history) is kept after every
epoch in a hidden sibling of ``out`` (``.model.partial/`` beside ``model/``), never
inside ``out``: ``out`` holds either nothing or a complete model. Ctrl-C saves the kept
epoch so far (``--keep``) to ``out`` and keeps the checkpoint, which ``resume=True`` continues from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__, distribute, model_folder
from catsdogs.backend import cpu_has_bfloat16, describe_device
from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig, TrainConfig, is_time_limited_default
from data_prep import failpoints, safeio
from data_prep.store import PreparedDataset, read_dataset

EpochReport = Callable[[dict[str, Any]], None]
BatchReport = Callable[[int, int, dict[str, float]], None]
CHECKPOINT_FORMAT = "catsdogs-checkpoint/1"
# Threads reading training batches ahead. Two or more also makes Keras read batches on demand
# after each epoch's reshuffle; with one, TensorFlow's prefetching may read the next
# epoch's first batches before the reshuffle.
TRAIN_WORKERS = 2
# Seconds a --budget keeps after its last training step, for what follows it: the
# validation of an epoch cut short, its checkpoint, the float32 copy, the model folder with
# its ONNX export, and the process's exit. About 4-5 s for the default model on a 2-core
# machine; with 3 s kept, and the last step allowed up to the deadline, two runs of
# --budget 5m took 299 and 303 s (issue 12, 2026-12-07). At most 5% of a short budget.
BUDGET_SAVE_SECONDS = 6.0
BUDGET_SAVE_SHARE = 0.05


# The log suggests --class-weight balanced when a class has this many times the photos of
# another.
IMBALANCE_RATIO = 1.5


@dataclass
class ClassBalance:
    """How many training photos each class has (the training split, without validation), and
    the class weights the loss uses (None: all 1)."""

    counts: dict[str, int]
    weights: dict[str, float] | None = None

    @property
    def largest(self) -> str:
        return max(self.counts, key=lambda name: self.counts[name])

    @property
    def smallest(self) -> str:
        return min(self.counts, key=lambda name: self.counts[name])

    @property
    def ratio(self) -> float:
        """Photos of the largest class per photo of the smallest."""
        return self.counts[self.largest] / max(1, self.counts[self.smallest])

    @property
    def imbalanced(self) -> bool:
        return self.ratio >= IMBALANCE_RATIO


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n_samples / (n_classes * count)`` for each class present in ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    total = int(counts.sum())
    return {index: total / (num_classes * int(count))
            for index, count in enumerate(counts) if count > 0}


@dataclass
class TrainResult:
    """What :func:`train` did, for the CLI to report."""

    out: Path
    device: str
    best_epoch: int
    best: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    num_train: int = 0
    num_validation: int = 0
    worker_index: int = 0  # 0: the chief, which saved the model to ``out``
    num_workers: int = 1
    monitor: str = "val_loss"
    interrupted: bool = False
    saved: bool = True
    stopped_early: bool = False
    resumed_from: int = 0
    checkpoint: Path | None = None
    precision: str = "float32"
    balance: ClassBalance | None = None
    fine_tune_from: int = 0  # the first fine-tuning epoch (1-based); 0: none
    image_size: int = 0  # the side of the photos validated on and predicted at
    train_size: int = 0  # the side of the photos trained on (--train-scale)
    budget: float = 0.0  # seconds; 0: none
    budget_epochs: int = 0  # the epochs the budget allowed, by the last estimate
    epoch_seconds: float = 0.0  # the epoch time that estimate used
    keep: str = "best"  # --keep: which epoch's weights were saved
    kept_epoch: int = 0
    kept: dict[str, float] = field(default_factory=dict)  # that epoch's metrics


@dataclass
class Split:
    """Row numbers of ``images.npy`` for training and for validation."""

    train: np.ndarray
    validation: np.ndarray


def checkpoint_folder(out: Path) -> Path:
    """The hidden sibling of ``out`` that holds an unfinished run's checkpoint."""
    return out.parent / f".{safeio.sibling_stem(out)}.partial"


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse to replace anything but a catsdogs model folder, and that only with ``force``."""
    safeio.check_replaceable(out, force, model_folder.is_model_folder, "a catsdogs model",
                             "a model")


def make_optimizer(name: str, learning_rate: Any, weight_decay: float = 0.0, ema: float = 0.0):
    """The named optimizer; ``weight_decay`` is decoupled (AdamW-style) for all of them.
    ``ema`` above 0 keeps a moving average of the weights with that momentum per step."""
    keras = import_keras()
    decay = weight_decay if weight_decay > 0 else None
    average = {"use_ema": True, "ema_momentum": ema} if ema > 0 else {}
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay, **average)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **average)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=decay, **average)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, weight_decay=decay, **average)
    raise ValueError(f"unknown optimizer {name!r}")


def make_learning_rate(config: TrainConfig, steps_per_epoch: int) -> Any:
    """A float (constant, plateau) or a schedule over optimizer steps (cosine, step).

    cosine: linear warm-up from a tenth of the rate over ``warmup_epochs``, then cosine decay
    to 1% of it at the last epoch. step: the rate, a tenth of it from half-way, a hundredth
    from three quarters.
    """
    keras = import_keras()
    rate = float(config.learning_rate)
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule in ("constant", "plateau") or config.budget > 0:
        return rate  # with a budget, Budget sets the rate of every step (budget_rate)
    if config.lr_schedule == "cosine":
        warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
        if warmup <= 0:
            return keras.optimizers.schedules.CosineDecay(rate, total, alpha=0.01)
        return keras.optimizers.schedules.CosineDecay(
            rate * 0.1, total - warmup, alpha=0.01, warmup_target=rate, warmup_steps=warmup
        )
    if config.lr_schedule == "step":
        half = max(1, total // 2)
        three_quarters = max(half + 1, (3 * total) // 4)
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [half, three_quarters], [rate, rate * 0.1, rate * 0.01]
        )
    raise ValueError(f"unknown learning-rate schedule {config.lr_schedule!r}")


def budget_rate(config: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of ``step`` (from 0) of ``total``: the schedule of
    :func:`make_learning_rate`, for a number of steps known only while training."""
    rate = float(config.learning_rate)
    total = max(1, total)
    if config.lr_schedule == "cosine":
        warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
        if step < warmup:
            return rate * (0.1 + 0.9 * step / warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    if config.lr_schedule == "step":
        half = max(1, total // 2)
        return rate * (1.0 if step < half else 0.1 if step < max(half + 1, 3 * total // 4)
                       else 0.01)
    return rate


def average_momentum(config: TrainConfig, steps_per_epoch: int) -> float:
    """``config.ema``, lowered for short runs so that the average spans at most about the
    last tenth of the steps (0.99 averages over ~100 steps: most of a 20-step run would be
    the initial weights). 0: no average."""
    if config.ema <= 0:
        return 0.0
    total = max(1, config.epochs * steps_per_epoch)
    return min(config.ema, max(0.5, 1 - 10 / total))


def split_rows(dataset: PreparedDataset, config: TrainConfig) -> Split:
    """The stratified, seeded training/validation split of the rows training may see."""
    from catsdogs.data import stratified_split

    rows = dataset.training_rows()
    labels = dataset.manifest["label"].to_numpy()[rows]
    train_local, val_local = stratified_split(labels, config.validation_split, config.seed,
                                              dataset.classes)
    return Split(rows[train_local], rows[val_local])


# The Keras dtype policy of each --precision; float32 is Keras' own default.
DTYPE_POLICIES = {"mixed": "mixed_float16", "bfloat16": "mixed_bfloat16", "float32": None}
# What "Training on <device>" adds for each: float32, the rule, adds nothing.
PRECISION_NOTES = {"mixed": ", in mixed float16", "bfloat16": ", in bfloat16", "float32": ""}
# What it adds when --precision auto chose bfloat16 (a --budget run on a CPU that computes
# it natively).
AUTO_BFLOAT16_NOTE = (", in bfloat16 (--precision auto with --budget, on a CPU with native "
                      "bfloat16: more epochs fit; --precision float32 for float32)")


def resolve_precision(config: TrainConfig, device: str, prefer_bfloat16: bool = False) -> str:
    """"mixed", "bfloat16" or "float32". ``auto``: mixed precision on a GPU; on the CPU,
    bfloat16 under a ``--budget`` the user chose (not the default length's time limit) where
    ``prefer_bfloat16`` (:func:`bfloat16_pays`: it wins here), else float32.

    Under a budget bfloat16's faster epochs (1.55× the photos/s with AMX, 1.3× with
    AVX512_BF16 alone) fit more of them, and it scored higher held out and on the other
    source (an AMX Xeon, three seeds; a Zen 5, seven); at the default length, where the
    epochs are fixed, it scored about 2 points lower held out than float32 on a Zen 4
    (benchmarks/RESULTS.md, "bfloat16 under --budget", "A Zen 5, seven seeds" and "bfloat16
    on the CPU")."""
    if config.precision != "auto":
        return config.precision
    if device.startswith("GPU"):
        return "mixed"
    chosen_budget = config.budget > 0 and not is_time_limited_default(config.epochs,
                                                                      config.budget)
    return "bfloat16" if chosen_budget and prefer_bfloat16 else "float32"


def bfloat16_pays(model_config: ModelConfig) -> bool:
    """Whether bfloat16 gives a better classifier than float32 in the same time here, as
    measured: the conv blocks (no pretrained backbone, not measured) on TensorFlow (oneDNN)
    and a CPU that computes bfloat16 natively (AVX512_BF16 or AMX). Without it bfloat16
    would be emulated, and slower than float32."""
    keras = import_keras()
    return (model_config.backbone == "none" and keras.backend.backend() == "tensorflow"
            and cpu_has_bfloat16())


def precision_note(run: Run) -> str:
    """What "Training on <device>" adds for ``run.precision``, and why when auto chose it."""
    if run.precision == "bfloat16" and run.train_config.precision == "auto":
        return AUTO_BFLOAT16_NOTE
    return PRECISION_NOTES[run.precision]


@contextlib.contextmanager
def device_scope(config: TrainConfig) -> Iterator[str]:
    """Place everything on the CPU for ``device="cpu"``; yield the device's description."""
    keras = import_keras()
    if config.device == "cpu":
        with keras.device("cpu:0"):
            yield "CPU (--device cpu)"
    else:
        yield describe_device()


def build_and_compile(
    model_config: ModelConfig,
    train_config: TrainConfig,
    steps_per_epoch: int,
    precision: str,
    weights: str | None = None,
    train_size: int | None = None,
) -> tuple[Any, Any]:
    """(inference model, compiled training model).

    The training model is the augmentation layers (when ``augment`` is "layers") followed by the
    inference model, sharing its weights; only the inference model is ever saved. With a
    ``train_size`` other than the model's image size it takes photos of any size.
    ``weights`` are a backbone's initial weights (imagenet, none, a file; None: random).
    """
    from catsdogs.model import build_augmentation, build_model, build_trainer

    keras = import_keras()
    train_size = model_config.image_size if train_size is None else train_size
    keras.utils.set_random_seed(train_config.seed)
    model = build_model(model_config, dtype_policy=DTYPE_POLICIES[precision], weights=weights)
    augmentation = (build_augmentation(train_config.seed) if train_config.augment == "layers"
                    else None)
    trainer = build_trainer(model, augmentation, any_size=train_size != model_config.image_size)
    compile_trainer(trainer, model_config, train_config,
                    make_learning_rate(train_config, steps_per_epoch), precision,
                    steps_per_epoch)
    return model, trainer


def compile_trainer(trainer: Any, model_config: ModelConfig, train_config: TrainConfig,
                    learning_rate: Any, precision: str, steps_per_epoch: int) -> None:
    """Compile ``trainer`` with a new optimizer at ``learning_rate`` (a rate or a schedule),
    averaging the weights when ``train_config.ema`` asks for it."""
    keras = import_keras()
    binary = model_config.num_classes == 2
    loss_class = keras.losses.BinaryCrossentropy if binary else keras.losses.CategoricalCrossentropy
    optimizer = make_optimizer(train_config.optimizer, learning_rate, train_config.weight_decay,
                               average_momentum(train_config, steps_per_epoch))
    if precision == "mixed":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    trainer.compile(
        optimizer=optimizer,
        loss=loss_class(label_smoothing=train_config.label_smoothing),
        metrics=[accuracy_metric(binary, train_config.mixup)],
        jit_compile={"auto": "auto", "on": True, "off": False}[train_config.jit_compile],
    )


@import_keras().saving.register_keras_serializable(package="catsdogs")
def rounded_binary_accuracy(y_true: Any, y_pred: Any) -> Any:
    """Binary accuracy against the nearer hard label: with mixup's soft labels (0.7 for a
    dog blended with a cat), a photo counts for the class it mostly is."""
    keras = import_keras()
    return keras.metrics.binary_accuracy(keras.ops.round(y_true), y_pred)


def accuracy_metric(binary: bool, mixup: float) -> Any:
    """The training and validation accuracy, logged as "accuracy". With mixup's soft labels
    a two-class photo counts for the class that dominates it; otherwise (and for more
    classes, whose accuracy compares the argmax of the labels) Keras' own "accuracy", so
    that a saved model's compile settings need nothing from catsdogs."""
    keras = import_keras()
    if not binary or not mixup:
        return "accuracy"
    return keras.metrics.MeanMetricWrapper(rounded_binary_accuracy, name="accuracy")


class BatchProgress(import_keras().callbacks.Callback):
    """Calls ``report(step, steps, logs)`` after every training batch (for a progress bar)."""

    def __init__(self, report: BatchReport) -> None:
        super().__init__()
        self.report = report

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = int((self.params or {}).get("steps") or 0)
        self.report(batch + 1, steps, {k: float(v) for k, v in (logs or {}).items()})


class BestEpoch(import_keras().callbacks.Callback):
    """Record each epoch's metrics, report them, find the best epoch by ``monitor``, keep
    the weights of the epoch to save (``keep``: the best one, or the last one), and stop
    after ``patience`` epochs without improvement (0: never)."""

    def __init__(
        self,
        report: EpochReport | None = None,
        monitor: str = "val_loss",
        patience: int = 0,
        model: Any = None,
        keep: str = "best",
    ) -> None:
        super().__init__()
        self.report = report
        self.monitor = monitor
        self.patience = patience
        self.inference_model = model
        self.keep = keep
        self.rows: list[dict[str, Any]] = []
        self.best_value = float("inf")
        self.best_epoch = 0
        self.best_row: dict[str, Any] = {}
        self.kept_weights: list[np.ndarray] | None = None  # the best epoch's, or the last's
        self.epoch_started = 0.0
        self.stopped_early = False
        self.stage_start = 0  # patience counts from here too (the fine-tuning stage's start)

    @property
    def kept_row(self) -> dict[str, Any]:
        """The metrics of the epoch whose weights are kept: the best one, or the last."""
        if self.keep == "last":
            return self.rows[-1] if self.rows else {}
        return self.best_row

    @property
    def kept_epoch(self) -> int:
        return int(self.kept_row.get("epoch", 0))

    @property
    def target(self) -> Any:
        return self.inference_model if self.inference_model is not None else self.model

    def score(self, value: float) -> float:
        """Lower is better: accuracies are negated."""
        return -value if "accuracy" in self.monitor else value

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        if "learning_rate" not in row and self.model is not None:
            keras = import_keras()
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            row["learning_rate"] = float(rate)  # at the end of the epoch
        row["seconds"] = round(time.perf_counter() - self.epoch_started, 3)
        value = self.score(row.get(self.monitor, float("nan")))
        row["best"] = bool(value < self.best_value)  # NaN is never best
        if row["best"]:
            self.best_value = value
            self.best_epoch = epoch + 1
            self.best_row = dict(row)
        if row["best"] or self.keep == "last":
            self.kept_weights = self.target.get_weights()
        self.rows.append(row)
        if self.report is not None:
            self.report(row)
        if self.patience and epoch + 1 - max(self.best_epoch, self.stage_start) >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True

    def restore(self) -> None:
        """Put the kept epoch's weights into the model."""
        if self.kept_weights is not None:
            self.target.set_weights(self.kept_weights)

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_row": self.best_row}

    def load_state(self, state: dict[str, Any], kept_weights: list[np.ndarray] | None) -> None:
        self.rows = list(state["rows"])
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.best_row = dict(state["best_row"])
        self.kept_weights = kept_weights


def training_variables(trainer: Any) -> list[Any]:
    """Every variable a resumed run needs: the model's (weights, batch-norm statistics, the
    augmentation layers' random state) and the optimizer's (step count, moments)."""
    return [*trainer.variables, *trainer.optimizer.variables]


def save_training_state(trainer: Any, path: Path) -> None:
    """Write :func:`training_variables` to ``path`` (an .npz), whole or not at all.

    Plain numpy rather than ``save_weights``: an HDF5 write that fails half-way (a full
    disk) leaves h5py's library state broken for the rest of the process.
    """
    # Variable.numpy(), not keras.ops.convert_to_numpy: the same copy without the latter's
    # np.array(tensor) on TensorFlow, which NumPy 2 warns about for every variable.
    save_arrays(path, [variable.numpy() for variable in training_variables(trainer)])


def save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """``arrays`` as an .npz at ``path``, flushed to disk before this returns
    (:func:`data_prep.safeio.write_atomic`), so a ``state.json`` written next can rely on it."""
    safeio.write_atomic(path, lambda handle: np.savez(handle, *arrays))


def load_training_state(trainer: Any, path: Path) -> None:
    variables = training_variables(trainer)
    with np.load(path, allow_pickle=False) as stored:
        if len(stored.files) != len(variables):
            raise ValueError(f"checkpoint {path} does not match this model; start over with "
                             "--force")
        for i, variable in enumerate(variables):
            variable.assign(stored[f"arr_{i}"])


class Checkpoint(import_keras().callbacks.Callback):
    """After every epoch, write the whole training state into ``folder``.

    Files are named after the epoch; ``state.json`` (written last, atomically) names the
    current ones, and older ones are then removed, so the folder is consistent at every
    instant.
    """

    def __init__(self, folder: Path, keeper: BestEpoch, static: dict[str, Any],
                 plateau: Any = None, budget: Budget | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.keeper = keeper
        self.static = static
        self.plateau = plateau
        self.budget = budget

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = epoch + 1
        weights = f"training-{done:05d}.npz"
        save_training_state(self.model, self.folder / weights)
        # The best epoch's weights need a file of their own; the last epoch's are the
        # model's in the training state just written.
        kept = None
        if self.keeper.keep == "best" and self.keeper.kept_weights is not None:
            kept = f"kept-{self.keeper.kept_epoch:05d}.npz"
            if not (self.folder / kept).exists():
                save_arrays(self.folder / kept, self.keeper.kept_weights)
        failpoints.failpoint(failpoints.CHECKPOINT_WEIGHTS)
        state = dict(self.static)
        state.update({
            "format": CHECKPOINT_FORMAT,
            "epochs_done": done,
            "weights": weights,
            "kept_weights": kept,  # None: the training state's (--keep last), or none yet
            "keeper": self.keeper.state(),
            "plateau": plateau_state(self.plateau),
            "budget": self.budget.state() if self.budget is not None else None,
        })
        safeio.write_json_atomic(self.folder / "state.json", state, indent=1)
        for child in self.folder.iterdir():
            if child.name not in ("state.json", weights, kept):
                child.unlink(missing_ok=True)


class SwapAverage(import_keras().callbacks.SwapEMAWeights):
    """Puts the moving average of the weights (``--ema``) into the model for validation and
    at the end of every epoch, so the best epoch, the checkpoint and the saved model are the
    averaged weights; the trained ones go back in at the start of the next epoch. Listed
    first, so that the callbacks after it see the average. A checkpoint is written while the
    average is in the model: ``resumed`` says so, and the first epoch swaps them back."""

    def __init__(self, resumed: bool = False) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


class Budget(import_keras().callbacks.Callback):
    """Fits the epochs and the learning rate to a time budget (``--budget``).

    After every epoch the epochs that fit in the time left are counted from the measured
    epoch time (the first epoch, which includes compiling, only until a second one is
    measured); the learning rate of every step follows the schedule stretched over that many
    epochs (:func:`budget_rate`), so it reaches its end when the time is up. Training stops
    when no further epoch fits, and in the middle of an epoch once the time for training is
    over: the budget less what saving the model and exiting take (``BUDGET_SAVE_SECONDS``).
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, seconds_left: float,
                 started: float, planned: int = 0,
                 report: Callable[[int, float], None] | None = None) -> None:
        super().__init__()
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.deadline = started + seconds_left
        # the last step ends here, so that what follows it ends by the deadline
        self.stop_at = self.deadline - min(BUDGET_SAVE_SECONDS,
                                           BUDGET_SAVE_SHARE * config.budget)
        self.planned = planned or config.epochs
        self.report = report
        self.times: list[float] = []
        self.epoch_seconds = 0.0
        self.mark = started
        self.epoch = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.mark = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        step = self.epoch * self.steps_per_epoch + batch
        total = self.planned * self.steps_per_epoch
        self.model.optimizer.learning_rate = budget_rate(self.config, step, total,
                                                         self.steps_per_epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if time.perf_counter() > self.stop_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.times.append(now - self.mark)
        self.mark = now
        self.epoch_seconds = float(np.median(self.times[1:] or self.times))
        left = self.stop_at - now
        fits = max(0, math.floor(left / max(self.epoch_seconds, 1e-6)))
        self.planned = min(self.config.epochs, epoch + 1 + fits)
        if self.planned <= epoch + 1:
            self.model.stop_training = True
        if self.report is not None:
            self.report(self.planned, self.epoch_seconds)

    def state(self) -> dict[str, Any]:
        return {"seconds_left": max(0.0, self.deadline - time.perf_counter()),
                "planned": self.planned, "epoch_seconds": self.epoch_seconds}


class Plateau(import_keras().callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive an interruption (``resume_state``)."""

    resume_state: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # resets the counters
        if self.resume_state:
            self.wait = int(self.resume_state["wait"])
            self.cooldown_counter = int(self.resume_state["cooldown_counter"])
            self.best = float(self.resume_state["best"])


def plateau_state(plateau: Any) -> dict[str, Any] | None:
    if plateau is None:
        return None
    return {"wait": plateau.wait, "cooldown_counter": plateau.cooldown_counter,
            "best": float(plateau.best)}


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """The state of an interrupted run, or FileNotFoundError/ValueError."""
    path = folder / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"no interrupted run to resume: {folder} holds no checkpoint")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a catsdogs checkpoint")
    return state


def fit_model(
    trainer: Any,
    train_batches: Any,
    val_batches: Any,
    epochs: int,
    initial_epoch: int,
    callbacks: Sequence[Any],
    class_weight: dict[int, float] | None = None,
) -> bool:
    """``trainer.fit``; True when it was interrupted (Ctrl-C) rather than finished."""
    try:
        trainer.fit(
            train_batches,
            validation_data=val_batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=list(callbacks),
            class_weight=class_weight,
            shuffle=False,  # the batches shuffle themselves, seeded by epoch (resumable)
            verbose=0,
        )
    except KeyboardInterrupt:
        return True
    return False


def train(
    data: str | Path,
    out: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    force: bool = False,
    resume: bool = False,
    on_epoch: EpochReport | None = None,
    on_batch: BatchReport | None = None,
    on_start: Callable[[Any, str], None] | None = None,
    callbacks: Sequence[Any] = (),
    on_data: Callable[[ClassBalance], None] | None = None,
    tensorboard: str | Path | None = None,
    on_plan: Callable[[int, float], None] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train a classifier on the prepared dataset at ``data`` and save it to ``out``.

    ``model_config.image_size``, ``channels`` and ``num_classes`` are taken from the dataset
    (the caller's ``model_config`` is not changed). ``on_start(model, device)`` is called once
    the model is built, ``on_batch(step, steps, logs)`` after every training batch,
    ``on_epoch(row)`` after every epoch; ``callbacks`` are extra Keras callbacks, run after
    ours. The weights saved are those of the best epoch by ``train_config.monitor``, or with
    ``train_config.keep == "last"`` those of the last finished one.
    ``on_data(balance)`` is called once the split is made, with the photos per class
    (:class:`ClassBalance`). ``tensorboard`` is a folder for Keras' TensorBoard logs
    (ValueError at once, before any work, when TensorFlow or TensorBoard is not installed).
    With ``train_config.budget``, ``on_plan(epochs, epoch_seconds)`` says after every epoch
    how many epochs the budget allows, by the epoch time measured so far; the budget counts
    from ``started`` (a ``time.perf_counter()``; default: now).

    With ``model_config.backbone``, the backbone is frozen for ``train_config.epochs``, then
    its top layers are trained for ``fine_tune_epochs`` more (:func:`fine_tune`).

    With ``resume``, the run interrupted in ``out``'s checkpoint is continued with the
    configuration it was started with (``model_config`` and ``train_config`` are ignored).
    Ctrl-C (KeyboardInterrupt) during training returns a result with ``interrupted=True``
    after saving the kept epoch so far.

    With several workers (``TF_CONFIG``, see catsdogs.distribute) only the chief locks and
    writes ``out``.
    """
    # Choose the strategy before any TensorFlow op runs. Only the chief locks and writes
    # --out; other workers save to a scratch folder, removed once all workers are done.
    if tensorboard is not None:
        check_tensorboard()
    plan = distribute.plan()
    hooks = Hooks(on_epoch, on_batch, on_start, tuple(callbacks), on_data,
                  Path(tensorboard) if tensorboard is not None else None, on_plan)
    result = _train(Path(data), plan.output_folder(Path(out)), model_config, train_config,
                    plan=plan, force=force, resume=resume, hooks=hooks, started=started)
    plan.finish()
    return result


@dataclass
class Hooks:
    """The caller's reporting functions and extra Keras callbacks."""

    on_epoch: EpochReport | None = None
    on_batch: BatchReport | None = None
    on_start: Callable[[Any, str], None] | None = None
    callbacks: tuple[Any, ...] = ()
    on_data: Callable[[ClassBalance], None] | None = None
    tensorboard: Path | None = None
    on_plan: Callable[[int, float], None] | None = None


@dataclass
class Run:
    """One training run as its steps build it up."""

    data: Path
    dataset: PreparedDataset
    model_config: ModelConfig
    train_config: TrainConfig
    plan: distribute.DistributionPlan
    partial: Path
    state: dict[str, Any] | None
    split: Split
    device: str = ""
    precision: str = "float32"
    model: Any = None
    trainer: Any = None
    keeper: BestEpoch | None = None
    interrupted: bool = False
    balance: ClassBalance | None = None
    fine_tuned_layers: int = 0
    checkpoint_static: dict[str, Any] | None = None  # what every checkpoint's state.json says
    started: float = 0.0  # time.perf_counter() when the run began (set-up included)
    steps_per_epoch: int = 0
    budget: Budget | None = None
    # the side of the photos trained on (--train-scale); validation and the saved model use
    # model_config.image_size
    train_size: int = 0

    @property
    def initial_epoch(self) -> int:
        return int(self.state["epochs_done"]) if self.state else 0


def _train(data: Path, out: Path, model_config: ModelConfig, train_config: TrainConfig, *,
           plan: distribute.DistributionPlan, force: bool, resume: bool, hooks: Hooks,
           started: float | None = None) -> TrainResult:
    """:func:`train` of one worker: lock ``out``, train, write the model folder."""
    started = time.perf_counter() if started is None else started
    dataset = read_dataset(data)
    partial = checkpoint_folder(out)
    with safeio.output_folder(
        out, kind="model", force=force or resume, is_ours=model_folder.is_model_folder,
        check=lambda: load_resume_state(partial, dataset, data, resume=resume, force=force),
    ) as build:
        try:
            run = start_run(data, dataset, model_config, train_config, plan, partial,
                            build.checked)
            run.started = started
            fit(run, hooks, out)
            if run.keeper.kept_weights is None:
                build.discard()  # interrupted before the first epoch ended: nothing to save
            else:
                model_folder.write_model_folder(build.path, float32_model(run), model_info(run),
                                                run.keeper.rows)
        except OSError:
            # A full or failing disk: leave nothing behind from a fresh run (a checkpoint
            # that a --resume continues is kept as it was).
            if build.checked is None:
                shutil.rmtree(partial, ignore_errors=True)
            raise
    if not run.interrupted:
        shutil.rmtree(partial, ignore_errors=True)
    return train_result(run, out, time.perf_counter() - started)


def load_resume_state(partial: Path, dataset: PreparedDataset, data: Path, *, resume: bool,
                      force: bool) -> dict[str, Any] | None:
    """With ``resume``, the checkpoint of the interrupted run (trained on this dataset).
    Without it, an interrupted run is only thrown away with ``force``."""
    if resume:
        state = read_checkpoint(partial)
        if state.get("dataset_fingerprint") != dataset.info.get("fingerprint"):
            raise ValueError(
                f"the interrupted run in {partial} was trained on another dataset than {data}"
            )
        return state
    if partial.exists():
        if not force:
            raise ValueError(
                f"{partial} holds an interrupted run: continue it with --resume, "
                "or use --force to start over"
            )
        shutil.rmtree(partial)
    return None


def start_run(data: Path, dataset: PreparedDataset, model_config: ModelConfig,
              train_config: TrainConfig, plan: distribute.DistributionPlan, partial: Path,
              state: dict[str, Any] | None) -> Run:
    """The configurations of this run (those of the interrupted run when resuming; image
    size, channels and classes from the dataset, on a copy of the caller's ``model_config``)
    and its training/validation split."""
    if state is not None:
        model_config = ModelConfig.from_dict(state["model"])
        train_config = TrainConfig.from_dict(state["training"])
    model_config = dataclasses.replace(model_config, image_size=dataset.image_size,
                                       channels=dataset.channels,
                                       num_classes=len(dataset.classes))
    model_config.validate()
    # "auto" resolved, so that model.json and a checkpoint say the scale and the epoch kept
    # that this run used
    train_config = dataclasses.replace(
        train_config, train_scale=train_config.resolved_train_scale(model_config),
        keep=train_config.resolved_keep)
    train_size = train_config.train_size(model_config)  # ValueError when the blocks do not fit
    if train_config.fine_tune_epochs and model_config.backbone == "none":
        raise ValueError("--fine-tune-epochs fine-tunes a pretrained backbone: use it with "
                         "--backbone")
    if train_config.budget and model_config.backbone != "none":
        raise ValueError("--budget does not plan a backbone's two stages yet: give --epochs "
                         "and --fine-tune-epochs instead")
    return Run(data, dataset, model_config, train_config, plan, partial, state,
               split_rows(dataset, train_config), train_size=train_size)


def make_batches(run: Run) -> tuple[Any, Any, int]:
    """(training batches, validation batches, steps per epoch). ``plan.dataset`` gives each
    builder this worker's shard and the batch size the strategy expects (--batch-size per
    replica); unchanged on one device."""
    from catsdogs.data import ImageBatches

    dataset, config, plan = run.dataset, run.train_config, run.plan
    labels = dataset.manifest["label"].to_numpy()
    classes = run.model_config.num_classes
    train_batches = plan.dataset(
        lambda index, batch_size: ImageBatches(
            dataset.images, labels, index, batch_size, shuffle=True,
            seed=config.seed + plan.worker_index, num_classes=classes,
            start_epoch=run.initial_epoch, workers=TRAIN_WORKERS,
            augment=config.augment == "crop", mixup=config.mixup, size=run.train_size,
        ),
        run.split.train, config.batch_size,
    )
    val_batches = plan.dataset(
        lambda index, batch_size: ImageBatches(dataset.images, labels, index, batch_size,
                                               num_classes=classes),
        run.split.validation, config.batch_size,
    )
    return train_batches, val_batches, plan.steps_per_epoch(run.split.train, config.batch_size)


def make_callbacks(run: Run, hooks: Hooks) -> list[Any]:
    """Ours (best epoch, plateau, checkpoint, batch progress), then the caller's. Loads the
    interrupted run's state into them when resuming."""
    config = run.train_config
    run.keeper = BestEpoch(hooks.on_epoch, config.monitor, config.patience, run.model,
                           config.keep)
    plateau = None
    if config.lr_schedule == "plateau":
        plateau = Plateau(monitor=config.monitor, factor=0.2, patience=3,
                          min_lr=config.learning_rate * 1e-3)
    if run.state is not None:
        restore_checkpoint(run.partial, run.state, run.trainer, run.keeper, plateau)
    static = {
        "model": run.model_config.to_dict(),
        "training": config.to_dict(),
        "dataset_fingerprint": run.dataset.info.get("fingerprint"),
        "fine_tuning": bool(run.fine_tuned_layers),  # a checkpoint of the second stage
    }
    run.checkpoint_static = static
    # The average goes into the model first, so that every later callback sees it.
    ours: list[Any] = [SwapAverage(resumed=run.state is not None)] if config.ema > 0 else []
    if config.budget > 0:  # before the keeper: an epoch's line counts against the new plan
        stored = (run.state or {}).get("budget") or {}
        run.budget = Budget(config, run.steps_per_epoch,
                            float(stored.get("seconds_left", config.budget)), run.started,
                            int(stored.get("planned", 0)), hooks.on_plan)
        ours.append(run.budget)
    ours.append(run.keeper)
    if plateau is not None:
        ours.append(plateau)
    ours.append(Checkpoint(run.partial, run.keeper, static, plateau, run.budget))
    if hooks.on_batch is not None:
        ours.append(BatchProgress(hooks.on_batch))
    if hooks.tensorboard is not None:
        keras = import_keras()
        # Epoch scalars (loss, accuracy, their val_ twins, the learning rate), no graph
        ours.append(keras.callbacks.TensorBoard(log_dir=str(hooks.tensorboard),
                                                update_freq="epoch", write_graph=False))
    return [*ours, *hooks.callbacks]


def fit(run: Run, hooks: Hooks, out: Path) -> None:
    """Build the model on the chosen device, then fit it; the kept epoch's weights are in
    ``run.model`` afterwards."""
    train_batches, val_batches, steps_per_epoch = make_batches(run)
    run.steps_per_epoch = steps_per_epoch
    config, plan = run.train_config, run.plan
    run.balance = class_balance(run)
    if hooks.on_data is not None:
        hooks.on_data(run.balance)
    with device_scope(config) as device:
        run.precision = resolve_precision(config, device,
                                          bfloat16_pays(run.model_config))
        with plan.scope():  # variables mirrored over the replicas
            # A resumed run's weights come from its checkpoint: nothing to download.
            run.model, run.trainer = build_and_compile(
                run.model_config, config, steps_per_epoch, run.precision,
                weights=None if run.state else config.weights, train_size=run.train_size)
            if fine_tuning(run) and run.state and run.state.get("fine_tuning"):
                start_fine_tuning(run)  # resumed in the fine-tuning stage
        # Weights + optimizer state + archive overhead: refuse a too-full disk now, not
        # after training.
        safeio.check_free_space(out, 12 * run.model.count_params() + (64 << 10), "the model")
        # e.g. "CPU; 2 workers (MultiWorkerMirroredStrategy, ...)"
        run.device = f"{device}; {plan.describe(config.batch_size)}" if plan.active else device
        callbacks = make_callbacks(run, hooks)
        if hooks.on_start is not None:
            hooks.on_start(run.model, run.device + precision_note(run))
        with plan.scope():
            run.interrupted = run.initial_epoch < config.epochs and fit_model(
                run.trainer, train_batches, val_batches, config.epochs, run.initial_epoch,
                callbacks, class_weight=loss_weights(run),
            )
            if fine_tuning(run) and not run.interrupted:
                run.interrupted = fine_tune(run, train_batches, val_batches, callbacks)
    run.keeper.restore()


def class_balance(run: Run) -> ClassBalance:
    """The training split's photos per class, and the class weights of ``--class-weight``."""
    labels = run.dataset.manifest["label"].to_numpy()[run.split.train].astype(np.int64)
    classes = run.dataset.classes
    counts = np.bincount(labels, minlength=len(classes))
    weights = None
    if run.train_config.class_weight == "balanced":
        by_index = balanced_class_weights(labels, len(classes))
        weights = {classes[index]: round(value, 6) for index, value in by_index.items()}
    return ClassBalance({name: int(count) for name, count in zip(classes, counts, strict=True)},
                        weights)


def loss_weights(run: Run) -> dict[int, float] | None:
    """The ``class_weight`` argument of ``fit``: class index → weight, or None."""
    if run.balance is None or run.balance.weights is None:
        return None
    return {run.dataset.classes.index(name): value
            for name, value in run.balance.weights.items()}


def fine_tuning(run: Run) -> bool:
    """Whether this run has a fine-tuning stage (a backbone and ``fine_tune_epochs``)."""
    return run.model_config.backbone != "none" and run.train_config.fine_tune_epochs > 0


def start_fine_tuning(run: Run) -> None:
    """Unfreeze the top of the backbone and compile again at the fine-tuning rate."""
    from catsdogs.backbone import unfreeze_top

    config = run.train_config
    run.fine_tuned_layers = unfreeze_top(run.model, config.fine_tune_layers)
    compile_trainer(run.trainer, run.model_config, config, config.fine_tune_learning_rate,
                    run.precision, run.steps_per_epoch)
    if run.checkpoint_static is not None:  # later checkpoints are of this stage
        run.checkpoint_static["fine_tuning"] = True


def fine_tune(run: Run, train_batches: Any, val_batches: Any, callbacks: Sequence[Any]) -> bool:
    """The second stage of a backbone run: from the kept epoch of the frozen stage, train the
    top of the backbone too, at ``fine_tune_learning_rate``, for ``fine_tune_epochs``.
    True when interrupted."""
    config = run.train_config
    total = config.epochs + config.fine_tune_epochs
    start = max(run.initial_epoch, config.epochs)
    if start >= total:
        return False
    if not run.fine_tuned_layers:  # the frozen stage has just run (or was resumed at its end)
        run.keeper.restore()
        start_fine_tuning(run)
    run.keeper.stage_start = config.epochs
    run.keeper.stopped_early = False  # patience applies to each stage
    return fit_model(run.trainer, train_batches, val_batches, total, start, callbacks,
                     class_weight=loss_weights(run))


def check_tensorboard() -> None:
    """ValueError unless Keras' TensorBoard callback can write logs here: it needs
    TensorFlow's summary writer and the tensorboard package."""
    from importlib.util import find_spec

    if find_spec("tensorflow") is None:
        raise ValueError("--tensorboard needs TensorFlow, which is not installed "
                         "(pip install tensorflow tensorboard); nothing was trained")
    if find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package (pip install "
                         "tensorboard); nothing was trained")


def model_info(run: Run) -> dict[str, Any]:
    """What model.json says about the model besides its format: what prediction needs, and
    how the model was built and trained."""
    keras = import_keras()
    keeper, dataset = run.keeper, run.dataset
    return {
        "classes": dataset.classes,
        "image_size": dataset.image_size,
        "train_size": run.train_size,
        "resize_policy": dataset.info.get("resize_policy", "stretch"),
        "channels": dataset.channels,
        "channel_order": "RGB" if dataset.channels == 3 else "gray",
        "model": run.model_config.to_dict(),
        "training": run.train_config.to_dict(),
        "best_epoch": keeper.best_epoch,
        "monitor": run.train_config.monitor,
        "best": keeper.best_row,
        "kept_epoch": keeper.kept_epoch,  # whose weights were saved (--keep)
        "kept": keeper.kept_row,
        "epochs_run": len(keeper.rows),
        "interrupted": run.interrupted,
        "num_train": int(len(run.split.train)),
        "num_validation": int(len(run.split.validation)),
        "dataset": str(run.data.resolve()),
        "device": run.device,
        "distribution": run.plan.to_dict(run.train_config.batch_size),
        "precision": run.precision,
        "class_counts": run.balance.counts if run.balance else None,
        "class_weights": run.balance.weights if run.balance else None,
        "fine_tuned_layers": run.fine_tuned_layers,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "catsdogs_version": __version__,
    }


def float32_model(run: Run) -> Any:
    """The model to save: ``run.model`` itself, or for a reduced ``run.precision`` the same
    network in float32 with its weights (which are float32 already), so that the saved model
    predicts in float32 on any machine and exports to ONNX as a float32 graph."""
    if DTYPE_POLICIES[run.precision] is None:
        return run.model
    from catsdogs.model import build_model

    model = build_model(run.model_config)
    model.set_weights(run.model.get_weights())
    return model


def train_result(run: Run, out: Path, seconds: float) -> TrainResult:
    keeper = run.keeper
    return TrainResult(
        out=out,
        device=run.device,
        best_epoch=keeper.best_epoch,
        best=keeper.best_row,
        epochs_run=len(keeper.rows),
        seconds=seconds,
        history=keeper.rows,
        num_train=int(len(run.split.train)),
        num_validation=int(len(run.split.validation)),
        monitor=run.train_config.monitor,
        interrupted=run.interrupted,
        saved=keeper.kept_weights is not None,
        keep=run.train_config.keep,
        kept_epoch=keeper.kept_epoch,
        kept=keeper.kept_row,
        stopped_early=keeper.stopped_early,
        resumed_from=run.initial_epoch,
        checkpoint=run.partial if run.interrupted and run.partial.exists() else None,
        precision=run.precision,
        balance=run.balance,
        fine_tune_from=run.train_config.epochs + 1 if run.fine_tuned_layers else 0,
        worker_index=run.plan.worker_index,
        num_workers=run.plan.num_workers,
        image_size=run.model_config.image_size,
        train_size=run.train_size,
        budget=run.train_config.budget,
        budget_epochs=run.budget.planned if run.budget is not None else 0,
        epoch_seconds=run.budget.epoch_seconds if run.budget is not None else 0.0,
    )


def restore_checkpoint(folder: Path, state: dict[str, Any], trainer: Any, keeper: BestEpoch,
                       plateau: Any) -> None:
    """Load weights and optimizer state (step count, so the schedule's position, and the
    learning rate), the history, the best and kept epochs so far, and the plateau counters."""
    optimizer = trainer.optimizer
    optimizer.build(trainer.trainable_variables)
    load_training_state(trainer, folder / state["weights"])
    kept_weights = None
    kept_file = state.get("kept_weights", state.get("best_weights"))  # the latter before --keep
    if kept_file:
        with np.load(folder / kept_file, allow_pickle=False) as stored:
            kept_weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    elif keeper.keep == "last" and state["keeper"]["rows"]:
        kept_weights = keeper.target.get_weights()  # the last epoch's, just loaded
    keeper.load_state(state["keeper"], kept_weights)
    if plateau is not None and state.get("plateau"):
        plateau.resume_state = state["plateau"]
