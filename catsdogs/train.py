"""``train(data, out, model_config, train_config)``: fit, keep the best epoch, save the model.

The run is split into small steps (:func:`split_rows`, :func:`build_and_compile`,
:func:`fit_model`, :func:`save_model_folder`) so that each can be wrapped or replaced on its
own. While it runs, a checkpoint (weights, optimizer state, epoch, history) is kept after
every epoch in a hidden sibling of ``out`` (``.model.partial/`` beside ``model/``), never
inside ``out``: ``out`` holds either nothing or a complete model. Ctrl-C saves the best
epoch so far to ``out`` and keeps the checkpoint, which ``resume=True`` continues from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__, bundle, distribute
from catsdogs.backend import describe_device
from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig, TrainConfig
from catsdogs.export import export_onnx, fingerprints
from data_prep import safeio
from data_prep.store import PreparedDataset, read_dataset

EpochReport = Callable[[dict[str, Any]], None]
BatchReport = Callable[[int, int, dict[str, float]], None]
CHECKPOINT_FORMAT = "catsdogs-checkpoint/1"
# Threads reading training batches ahead. Two or more also makes Keras read batches on demand
# after each epoch's reshuffle; with one, TensorFlow's prefetching may read the next
# epoch's first batches before the reshuffle.
TRAIN_WORKERS = 2


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
    worker_index: int = 0  # (#7) 0: the chief, which saved the model to ``out``
    num_workers: int = 1
    monitor: str = "val_loss"
    interrupted: bool = False
    saved: bool = True
    stopped_early: bool = False
    resumed_from: int = 0
    checkpoint: Path | None = None
    precision: str = "float32"


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
    safeio.check_replaceable(out, force, bundle.is_model_folder, "a catsdogs model", "a model")


def make_optimizer(name: str, learning_rate: Any, weight_decay: float = 0.0):
    """The named optimizer; ``weight_decay`` is decoupled (AdamW-style) for all of them."""
    keras = import_keras()
    decay = weight_decay if weight_decay > 0 else None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=decay)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, weight_decay=decay)
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
    if config.lr_schedule in ("constant", "plateau"):
        return rate
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


def training_rows(dataset: PreparedDataset) -> np.ndarray:
    """Rows of the manifest that training may see: all but a prepared test split."""
    manifest = dataset.manifest
    if "split" in manifest.columns:
        return np.flatnonzero(manifest["split"].astype(str).to_numpy() != "test")
    return np.arange(len(manifest))


def split_rows(dataset: PreparedDataset, config: TrainConfig) -> Split:
    """The stratified, seeded training/validation split of the rows training may see."""
    from catsdogs.data import stratified_split

    rows = training_rows(dataset)
    labels = dataset.manifest["label"].to_numpy()[rows]
    train_local, val_local = stratified_split(labels, config.validation_split, config.seed)
    return Split(rows[train_local], rows[val_local])


def resolve_precision(config: TrainConfig, device: str) -> str:
    """"mixed" or "float32": ``auto`` means mixed precision on a GPU, float32 on the CPU."""
    if config.precision != "auto":
        return config.precision
    return "mixed" if device.startswith("GPU") else "float32"


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
) -> tuple[Any, Any]:
    """(inference model, compiled training model).

    The training model is the augmentation layers (when ``augment``) followed by the
    inference model, sharing its weights; only the inference model is ever saved.
    """
    from catsdogs.model import build_augmentation, build_model, build_trainer

    keras = import_keras()
    keras.utils.set_random_seed(train_config.seed)
    policy = "mixed_float16" if precision == "mixed" else None
    model = build_model(model_config, dtype_policy=policy)
    augmentation = build_augmentation(train_config.seed) if train_config.augment else None
    trainer = build_trainer(model, augmentation)
    binary = model_config.num_classes == 2
    loss_class = keras.losses.BinaryCrossentropy if binary else keras.losses.CategoricalCrossentropy
    optimizer = make_optimizer(
        train_config.optimizer,
        make_learning_rate(train_config, steps_per_epoch),
        train_config.weight_decay,
    )
    if precision == "mixed":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    trainer.compile(
        optimizer=optimizer,
        loss=loss_class(label_smoothing=train_config.label_smoothing),
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[train_config.jit_compile],
    )
    return model, trainer


class BatchProgress(import_keras().callbacks.Callback):
    """Calls ``report(step, steps, logs)`` after every training batch (for a progress bar)."""

    def __init__(self, report: BatchReport) -> None:
        super().__init__()
        self.report = report

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = int((self.params or {}).get("steps") or 0)
        self.report(batch + 1, steps, {k: float(v) for k, v in (logs or {}).items()})


class BestEpoch(import_keras().callbacks.Callback):
    """Record each epoch's metrics, report them, keep the weights of the best epoch by
    ``monitor``, and stop after ``patience`` epochs without improvement (0: never)."""

    def __init__(
        self,
        report: EpochReport | None = None,
        monitor: str = "val_loss",
        patience: int = 0,
        model: Any = None,
    ) -> None:
        super().__init__()
        self.report = report
        self.monitor = monitor
        self.patience = patience
        self.inference_model = model
        self.rows: list[dict[str, Any]] = []
        self.best_value = float("inf")
        self.best_epoch = 0
        self.best_row: dict[str, Any] = {}
        self.best_weights: list[np.ndarray] | None = None
        self.epoch_started = 0.0
        self.stopped_early = False

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
            self.best_weights = self.target.get_weights()
        self.rows.append(row)
        if self.report is not None:
            self.report(row)
        if self.patience and epoch + 1 - self.best_epoch >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True

    def restore(self) -> None:
        if self.best_weights is not None:
            self.target.set_weights(self.best_weights)

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_row": self.best_row}

    def load_state(self, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> None:
        self.rows = list(state["rows"])
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.best_row = dict(state["best_row"])
        self.best_weights = best_weights


def training_variables(trainer: Any) -> list[Any]:
    """Every variable a resumed run needs: the model's (weights, batch-norm statistics, the
    augmentation layers' random state) and the optimizer's (step count, moments)."""
    return [*trainer.variables, *trainer.optimizer.variables]


def save_training_state(trainer: Any, path: Path) -> None:
    """Write :func:`training_variables` to ``path`` (an .npz), whole or not at all.

    Plain numpy rather than ``save_weights``: an HDF5 write that fails half-way (a full
    disk) leaves h5py's library state broken for the rest of the process.
    """
    keras = import_keras()
    arrays = [keras.ops.convert_to_numpy(v) for v in training_variables(trainer)]
    tmp = path.parent / f".{path.name}.tmp.npz"
    try:
        np.savez(tmp, *arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
                 plateau: Any = None) -> None:
        super().__init__()
        self.folder = folder
        self.keeper = keeper
        self.static = static
        self.plateau = plateau

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = epoch + 1
        weights = f"training-{done:05d}.npz"
        save_training_state(self.model, self.folder / weights)
        best = f"best-{self.keeper.best_epoch:05d}.npz"
        if not (self.folder / best).exists() and self.keeper.best_weights is not None:
            tmp = self.folder / f".{best}.tmp.npz"
            np.savez(tmp, *self.keeper.best_weights)
            os.replace(tmp, self.folder / best)
        state = dict(self.static)
        state.update({
            "format": CHECKPOINT_FORMAT,
            "epochs_done": done,
            "weights": weights,
            "best_weights": best if self.keeper.best_weights is not None else None,
            "keeper": self.keeper.state(),
            "plateau": plateau_state(self.plateau),
        })
        safeio.write_text_atomic(self.folder / "state.json", json.dumps(state, indent=1) + "\n")
        for child in self.folder.iterdir():
            if child.name not in ("state.json", weights, best):
                child.unlink(missing_ok=True)


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
) -> bool:
    """``trainer.fit``; True when it was interrupted (Ctrl-C) rather than finished."""
    try:
        trainer.fit(
            train_batches,
            validation_data=val_batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=list(callbacks),
            shuffle=False,  # the batches shuffle themselves, seeded by epoch (resumable)
            verbose=0,
        )
    except KeyboardInterrupt:
        return True
    return False


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, training against validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            axis.plot(epochs, [row.get(key, float("nan")) for row in rows], marker=".",
                      label=label)
        best = [row["epoch"] for row in rows if row.get("best")]
        if best:
            axis.axvline(best[-1], color="grey", linestyle=":", label=f"best epoch {best[-1]}")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_model_folder(out: Path, model: Any, info: dict[str, Any],
                      rows: list[dict[str, Any]]) -> None:
    """Write model.keras, model.json, history.csv and curves.png aside, then publish them."""
    import pandas as pd

    tmp = safeio.temporary_sibling(out)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / "model.keras")
        # The same model as ONNX, for fast Keras-free predict (#5); a note when it fails.
        onnx = export_onnx(model, tmp / "model.onnx")
        if onnx.get("file"):  # tie model.onnx to this model.keras: predict checks both
            onnx.update(fingerprints(tmp))
        info = {**info, "onnx": onnx}
        (tmp / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        pd.DataFrame(rows).to_csv(tmp / "history.csv", index=False)
        plot_curves(rows, tmp / "curves.png")
        safeio.publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
) -> TrainResult:
    """Train a classifier on the prepared dataset at ``data`` and save it to ``out``.

    ``model_config.image_size`` and ``num_classes`` are taken from the dataset.
    ``on_start(model, device)`` is called once the model is built, ``on_batch(step, steps,
    logs)`` after every training batch, ``on_epoch(row)`` after every epoch; ``callbacks``
    are extra Keras callbacks, run after ours. The weights of the best epoch by
    ``train_config.monitor`` are the ones saved.

    With ``resume``, the run interrupted in ``out``'s checkpoint is continued with the
    configuration it was started with (``model_config`` and ``train_config`` are ignored).
    Ctrl-C (KeyboardInterrupt) during training returns a result with ``interrupted=True``
    after saving the best epoch so far.

    With several workers (``TF_CONFIG``, see catsdogs.distribute) only the chief locks and
    writes ``out``.
    """
    # (#7) choose the strategy before any TensorFlow op runs. Only the chief locks and writes
    # --out; other workers save to a scratch folder, removed once all workers are done.
    plan = distribute.plan()
    result = _train(data, plan.output_folder(Path(out)), model_config, train_config,
                    plan=plan, force=force, resume=resume, on_epoch=on_epoch,
                    on_batch=on_batch, on_start=on_start, callbacks=callbacks)
    plan.finish()
    return result


@safeio.locks_output("out")  # one writer per --out; see safeio
def _train(
    data: str | Path,
    out: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    plan: distribute.DistributionPlan,
    force: bool = False,
    resume: bool = False,
    on_epoch: EpochReport | None = None,
    on_batch: BatchReport | None = None,
    on_start: Callable[[Any, str], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """:func:`train` under the lock of ``out``."""
    from catsdogs.data import ImageBatches

    keras = import_keras()
    started = time.perf_counter()
    out_path = Path(out)
    dataset = read_dataset(data)
    partial = checkpoint_folder(out_path)
    state: dict[str, Any] | None = None
    if resume:
        state = read_checkpoint(partial)
        if state.get("dataset_fingerprint") != dataset.info.get("fingerprint"):
            raise ValueError(
                f"the interrupted run in {partial} was trained on another dataset than {data}"
            )
        model_config = ModelConfig.from_dict(state["model"])
        train_config = TrainConfig.from_dict(state["training"])
    elif partial.exists():
        if not force:
            raise ValueError(
                f"{partial} holds an interrupted run: continue it with --resume, "
                "or use --force to start over"
            )
        shutil.rmtree(partial)
    check_out_folder(out_path, force or resume)

    model_config.image_size = dataset.image_size
    model_config.num_classes = len(dataset.classes)
    model_config.validate()
    split = split_rows(dataset, train_config)
    all_labels = dataset.manifest["label"].to_numpy()
    binary = model_config.num_classes == 2
    initial_epoch = int(state["epochs_done"]) if state else 0

    # (#7) plan.dataset gives each builder this worker's shard and the batch size the
    # strategy expects (--batch-size per replica); unchanged on one device.
    train_batches = plan.dataset(
        lambda index, batch_size: ImageBatches(
            dataset.images, all_labels, index, batch_size,
            shuffle=True, seed=train_config.seed + plan.worker_index, binary=binary,
            num_classes=model_config.num_classes, start_epoch=initial_epoch,
            workers=TRAIN_WORKERS,
        ),
        split.train, train_config.batch_size,
    )
    val_batches = plan.dataset(
        lambda index, batch_size: ImageBatches(
            dataset.images, all_labels, index, batch_size,
            binary=binary, num_classes=model_config.num_classes,
        ),
        split.validation, train_config.batch_size,
    )
    steps_per_epoch = plan.steps_per_epoch(split.train, train_config.batch_size)

    try:
        with device_scope(train_config) as device:
            precision = resolve_precision(train_config, device)
            with plan.scope():  # (#7) variables mirrored over the replicas
                model, trainer = build_and_compile(model_config, train_config, steps_per_epoch,
                                                   precision)
            # Weights + optimizer state + archive overhead: refuse a too-full disk now, not
            # after training.
            safeio.check_free_space(out_path, 12 * model.count_params() + (64 << 10), "the model")
            if plan.active:  # (#7) e.g. "CPU; 2 workers (MultiWorkerMirroredStrategy, ...)"
                device = f"{device}; {plan.describe(train_config.batch_size)}"
            keeper = BestEpoch(on_epoch, train_config.monitor, train_config.patience, model)
            plateau = None
            if train_config.lr_schedule == "plateau":
                plateau = Plateau(
                    monitor=train_config.monitor, factor=0.2, patience=3,
                    min_lr=train_config.learning_rate * 1e-3,
                )
            static = {
                "model": model_config.to_dict(),
                "training": train_config.to_dict(),
                "dataset_fingerprint": dataset.info.get("fingerprint"),
            }
            if state is not None:
                restore_checkpoint(partial, state, trainer, keeper, plateau)
            if on_start is not None:
                on_start(model, device)
            ours: list[Any] = [keeper]
            if plateau is not None:
                ours.append(plateau)
            ours.append(Checkpoint(partial, keeper, static, plateau))
            if on_batch is not None:
                ours.append(BatchProgress(on_batch))
            with plan.scope():  # (#7)
                interrupted = initial_epoch < train_config.epochs and fit_model(
                    trainer, train_batches, val_batches, train_config.epochs, initial_epoch,
                    [*ours, *callbacks],
                )
        keeper.restore()

        saved = keeper.best_weights is not None
        if saved:
            info = {
                "format": bundle.FORMAT,
                "classes": dataset.classes,
                "image_size": dataset.image_size,
                "resize_policy": dataset.info.get("resize_policy", "stretch"),
                "channel_order": "RGB",
                "model": model_config.to_dict(),
                "training": train_config.to_dict(),
                "best_epoch": keeper.best_epoch,
                "monitor": train_config.monitor,
                "best": keeper.best_row,
                "epochs_run": len(keeper.rows),
                "interrupted": interrupted,
                "num_train": int(len(split.train)),
                "num_validation": int(len(split.validation)),
                "dataset": str(Path(data).resolve()),
                "device": device,
                "distribution": plan.to_dict(train_config.batch_size),  # (#7)
                "precision": precision,
                "backend": keras.backend.backend(),
                "keras_version": keras.__version__,
                "catsdogs_version": __version__,
            }
            save_model_folder(out_path, model, info, keeper.rows)
    except OSError:
        # A full or failing disk: leave nothing behind from a fresh run (a checkpoint that a
        # --resume continues is kept as it was).
        if state is None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if not interrupted:
        shutil.rmtree(partial, ignore_errors=True)
    return TrainResult(
        out=out_path,
        device=device,
        best_epoch=keeper.best_epoch,
        best=keeper.best_row,
        epochs_run=len(keeper.rows),
        seconds=time.perf_counter() - started,
        history=keeper.rows,
        num_train=int(len(split.train)),
        num_validation=int(len(split.validation)),
        monitor=train_config.monitor,
        interrupted=interrupted,
        saved=saved,
        stopped_early=keeper.stopped_early,
        resumed_from=initial_epoch,
        checkpoint=partial if interrupted and partial.exists() else None,
        precision=precision,
        worker_index=plan.worker_index,
        num_workers=plan.num_workers,
    )


def restore_checkpoint(folder: Path, state: dict[str, Any], trainer: Any, keeper: BestEpoch,
                       plateau: Any) -> None:
    """Load weights and optimizer state (step count, so the schedule's position, and the
    learning rate), the history and best epoch so far, and the plateau counters."""
    optimizer = trainer.optimizer
    optimizer.build(trainer.trainable_variables)
    load_training_state(trainer, folder / state["weights"])
    best_weights = None
    if state.get("best_weights"):
        with np.load(folder / state["best_weights"], allow_pickle=False) as stored:
            best_weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    keeper.load_state(state["keeper"], best_weights)
    if plateau is not None and state.get("plateau"):
        plateau.resume_state = state["plateau"]
