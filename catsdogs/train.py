"""``train(data, out, model_config, train_config)``: fit, keep the best epoch, save the model."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__, bundle
from catsdogs.backend import describe_device
from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig, TrainConfig
from catsdogs.export import export_onnx
from data_prep import safeio
from data_prep.store import PreparedDataset, read_dataset

EpochReport = Callable[[dict[str, Any]], None]


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


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse to replace anything but a catsdogs model folder, and that only with ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if bundle.is_model_folder(out):
        if not force:
            raise ValueError(f"{out} already holds a model; use --force to replace it")
        return
    if any(out.iterdir()):
        raise ValueError(
            f"output folder {out} is not empty and is not a catsdogs model; choose another --out"
        )


def make_optimizer(name: str, learning_rate: float):
    keras = import_keras()
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")


def training_rows(dataset: PreparedDataset) -> np.ndarray:
    """Rows of the manifest that training may see: all but a prepared test split."""
    manifest = dataset.manifest
    if "split" in manifest.columns:
        return np.flatnonzero(manifest["split"].astype(str).to_numpy() != "test")
    return np.arange(len(manifest))


def train(
    data: str | Path,
    out: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    force: bool = False,
    on_epoch: EpochReport | None = None,
    on_start: Callable[[Any, str], None] | None = None,
) -> TrainResult:
    """Train a classifier on the prepared dataset at ``data`` and save it to ``out``.

    ``model_config.image_size`` and ``num_classes`` are taken from the dataset.
    ``on_start(model, device)`` is called once the model is built, ``on_epoch(row)`` after
    every epoch with the epoch's metrics. The weights of the best epoch (lowest validation
    loss) are the ones saved.
    """
    from catsdogs.data import ImageBatches, stratified_split
    from catsdogs.model import build_model

    keras = import_keras()
    started = time.perf_counter()
    out_path = Path(out)
    dataset = read_dataset(data)
    check_out_folder(out_path, force)

    model_config.image_size = dataset.image_size
    model_config.num_classes = len(dataset.classes)
    model_config.validate()
    rows = training_rows(dataset)
    labels = dataset.manifest["label"].to_numpy()[rows]
    train_local, val_local = stratified_split(
        labels, train_config.validation_split, train_config.seed
    )
    train_index, val_index = rows[train_local], rows[val_local]
    all_labels = dataset.manifest["label"].to_numpy()
    binary = model_config.num_classes == 2

    keras.utils.set_random_seed(train_config.seed)
    model = build_model(model_config)
    model.compile(
        optimizer=make_optimizer(train_config.optimizer, train_config.learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    device = describe_device()
    if on_start is not None:
        on_start(model, device)

    train_batches = ImageBatches(
        dataset.images, all_labels, train_index, train_config.batch_size,
        shuffle=True, seed=train_config.seed, binary=binary,
    )
    val_batches = ImageBatches(
        dataset.images, all_labels, val_index, train_config.batch_size, binary=binary
    )
    keeper = BestEpoch(on_epoch)
    model.fit(
        train_batches,
        validation_data=val_batches,
        epochs=train_config.epochs,
        callbacks=[keeper],
        verbose=0,
    )
    keeper.restore()

    tmp = safeio.temporary_sibling(out_path)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / "model.keras")
        onnx = export_onnx(model, tmp / "model.onnx")  # fast, Keras-free predict (#5)
        info = {
            "format": bundle.FORMAT,
            "classes": dataset.classes,
            "image_size": dataset.image_size,
            "resize_policy": dataset.info.get("resize_policy", "stretch"),
            "channel_order": "RGB",
            "model": model_config.to_dict(),
            "training": train_config.to_dict(),
            "best_epoch": keeper.best_epoch,
            "best": keeper.best_row,
            "num_train": int(len(train_index)),
            "num_validation": int(len(val_index)),
            "dataset": str(Path(data).resolve()),
            "device": device,
            "backend": keras.backend.backend(),
            "keras_version": keras.__version__,
            "catsdogs_version": __version__,
            "onnx": onnx,
        }
        (tmp / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        import pandas as pd

        pd.DataFrame(keeper.rows).to_csv(tmp / "history.csv", index=False)
        safeio.publish_folder(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainResult(
        out=out_path,
        device=device,
        best_epoch=keeper.best_epoch,
        best=keeper.best_row,
        epochs_run=len(keeper.rows),
        seconds=time.perf_counter() - started,
        history=keeper.rows,
        num_train=int(len(train_index)),
        num_validation=int(len(val_index)),
    )


class BestEpoch(import_keras().callbacks.Callback):
    """Record each epoch's metrics, report them, and keep the weights of the best epoch."""

    def __init__(self, report: EpochReport | None = None, monitor: str = "val_loss") -> None:
        super().__init__()
        self.report = report
        self.monitor = monitor
        self.rows: list[dict[str, Any]] = []
        self.best_value = float("inf")
        self.best_epoch = 0
        self.best_row: dict[str, Any] = {}
        self.best_weights: list[np.ndarray] | None = None
        self.epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["seconds"] = round(time.perf_counter() - self.epoch_started, 3)
        value = row.get(self.monitor, float("inf"))
        row["best"] = bool(value < self.best_value)
        if row["best"]:
            self.best_value = value
            self.best_epoch = epoch + 1
            self.best_row = dict(row)
            self.best_weights = self.model.get_weights()
        self.rows.append(row)
        if self.report is not None:
            self.report(row)

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
