"""One accuracy experiment for issue 12, standalone Keras 3 (TensorFlow backend, keras APIs).

Trains on the non-test rows of a prepared dataset (``catsdogs prepare SRC --test-fraction 0.2``),
keeping ``--validation-split`` of them aside as catsdogs train does, and scores on the prepared
test split (never trained or tuned on) and on a second prepared dataset from another source
(``--other``: scored only). Every ``--eval-every`` epochs it records held-out accuracy of the
current weights, with and without test-time augmentation (mean with the horizontal mirror), and
of an exponential moving average of the weights (all of them, batch-norm statistics included).

Time: the machine is shared, so wall times are inflated. The script measures the default
recipe's training step rate (Keras augmentation layers + the default network) in the same
process, before and after the run, and reports this run's step time as a ratio of it; multiply
by the default's idle epoch time (about 6 s for 1,280-1,600 photos on 2 free cores) to estimate
the idle time.

Example:
    python benchmarks/recipes/train_recipe.py --data /tmp/acc/p128 --other /tmp/acc/other128 \
        --aug pipeline --arch default --epochs 40 --seed 1 --json /tmp/acc/runs/a.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from keras import layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, if not installed
from data_prep.split import stratified_split  # noqa: E402

cv2.setNumThreads(1)


# ---------------------------------------------------------------- data
def load_prepared(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 N×S×S×3 in memory, labels int, is_test bool) of a prepared dataset."""
    import csv

    images = np.load(folder / "images.npy", mmap_mode="r")
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(row["label"]) for row in rows])
    is_test = np.array([row.get("split", "train") == "test" for row in rows])
    return np.ascontiguousarray(images), labels, is_test


def stratified(labels: np.ndarray, rows: np.ndarray, share: float, seed: int):
    """(train rows, validation rows) of ``rows``: catsdogs' one split rule
    (``data_prep.split``), the same photos as ``train --validation-split``."""
    kept, split_off = stratified_split(labels[rows], share, seed)
    return rows[kept], rows[split_off]


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
    """Inception-style crop: a random box of ``scale`` of the area and ``ratio`` aspect, resized."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            crop = image[top:top + h, left:left + w]
            return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


class Batches(keras.utils.PyDataset):
    """uint8 batches, optionally augmented on uint8 with numpy/OpenCV (flip, crop, jitter)."""

    def __init__(self, images, labels, rows, batch_size, *, shuffle, seed, augment=None,
                 size=None, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels, self.rows = images, labels.astype("float32"), rows
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment = augment or {}
        self.size = size or images.shape[1]
        self.epoch = 0
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return self.rows
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.rows)

    def __len__(self):
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.images[chosen]
        y = self.labels[chosen].reshape(-1, 1)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x = self._augment(x, rng)
        elif self.size != x.shape[1]:
            x = np.stack([cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                          for img in x])
        return x, y

    def _augment(self, x, rng):
        a = self.augment
        out = np.empty((len(x), self.size, self.size, 3), np.uint8)
        for i, image in enumerate(x):
            if a.get("crop_min", 1.0) < 1.0:
                image = random_resized_crop(image, rng, self.size, (a["crop_min"], 1.0),
                                            (3 / 4, 4 / 3))
            elif self.size != image.shape[0]:
                image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                image = image[:, ::-1]
            out[i] = image
        jitter = a.get("jitter", 0.0)
        if jitter > 0:
            f = out.astype(np.float32)
            n = len(f)
            brightness = rng.uniform(1 - jitter, 1 + jitter, (n, 1, 1, 1)).astype(np.float32)
            contrast = rng.uniform(1 - jitter, 1 + jitter, (n, 1, 1, 1)).astype(np.float32)
            saturation = rng.uniform(1 - jitter, 1 + jitter, (n, 1, 1, 1)).astype(np.float32)
            gray = f.mean(axis=3, keepdims=True)
            f = gray + (f - gray) * saturation
            mean = f.mean(axis=(1, 2, 3), keepdims=True)
            f = (f - mean) * contrast + mean * brightness
            out = np.clip(f, 0, 255).astype(np.uint8)
        return out

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


# ---------------------------------------------------------------- models
def default_net(size: int, filters: int = 16, blocks: int = 5, head: str = "flatten",
                padding: str = "valid", dropout: float = 0.3) -> keras.Sequential:
    """catsdogs' default network (as of commit 9fd2208)."""
    stack = [keras.Input((size, size, 3)), layers.Rescaling(1 / 255)]
    for block in range(blocks):
        stack += [layers.Conv2D(filters * 2**block, 3, padding=padding, use_bias=False),
                  layers.BatchNormalization(momentum=0.9), layers.Activation("relu"),
                  layers.MaxPooling2D(2)]
    stack.append(layers.GlobalAveragePooling2D() if head == "gap" else layers.Flatten())
    if dropout:
        stack.append(layers.Dropout(dropout))
    stack.append(layers.Dense(1, activation="sigmoid"))
    return keras.Sequential(stack)


def sepres_net(size: int, widths=(32, 64, 128, 256), stem: int = 32,
               dropout: float = 0.3) -> keras.Model:
    """Small Xception-style net (Deep Learning with Python 2nd ed., ch. 9), with a strided stem."""
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.Activation("relu")(x)
    for width in widths:
        residual = x
        for _ in range(2):
            x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(width, 1, strides=2, padding="same", use_bias=False)(residual)
        x = layers.add([x, residual])
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def keras_augmentation(seed: int) -> keras.Sequential:
    """catsdogs' default augmentation layers (as of commit 9fd2208)."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
        layers.RandomContrast(0.2, seed=seed + 4),
    ])


def build(arch: str, size: int, width: int) -> keras.Model:
    if arch == "default":
        return default_net(size, filters=width)
    if arch == "gap":
        return default_net(size, filters=width, head="gap", padding="same")
    if arch == "sepres":
        return sepres_net(size, widths=tuple(width * 2 * 2**i for i in range(4)), stem=width * 2)
    raise ValueError(arch)


def compile_model(model, steps_total, warmup_steps, lr, weight_decay, smoothing):
    schedule = keras.optimizers.schedules.CosineDecay(
        lr * 0.1, max(1, steps_total - warmup_steps), alpha=0.01, warmup_target=lr,
        warmup_steps=warmup_steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=smoothing),
                  metrics=["accuracy"])


# ---------------------------------------------------------------- EMA + evaluation
class WeightEMA(keras.callbacks.Callback):
    """Exponential moving average of all the model's weights (BN statistics included)."""

    def __init__(self, net, momentum):
        super().__init__()
        self.net, self.momentum, self.average, self.steps = net, momentum, None, 0

    def on_train_batch_end(self, batch, logs=None):
        weights = self.net.get_weights()
        self.steps += 1
        if self.average is None:
            self.average = [w.astype(np.float32).copy() for w in weights]
            return
        # warm-up as in timm/TF: the momentum grows from 0 so early averages are not stale
        m = min(self.momentum, (1 + self.steps) / (10 + self.steps))
        for a, w in zip(self.average, weights, strict=True):
            a *= m
            a += (1 - m) * w


def predict(net, images, batch=128, tta=False):
    p = net.predict(images, batch_size=batch, verbose=0).reshape(-1)
    if tta:
        p = (p + net.predict(images[:, :, ::-1], batch_size=batch, verbose=0).reshape(-1)) / 2
    return p


def accuracies(net, images, labels, size):
    if images.shape[1] != size:
        images = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA)
                           for i in images])
    p = predict(net, images)
    q = (p + predict(net, images[:, :, ::-1])) / 2
    return float(((p > 0.5) == labels).mean()), float(((q > 0.5) == labels).mean())


def score(net, ema, sets, size):
    result = {}
    for name, (images, labels) in sets.items():
        plain, tta = accuracies(net, images, labels, size)
        result[name] = plain
        result[name + "_tta"] = tta
        if ema is not None and ema.average is not None:
            current = net.get_weights()
            net.set_weights(ema.average)
            plain, tta = accuracies(net, images, labels, size)
            result[name + "_ema"] = plain
            result[name + "_ema_tta"] = tta
            net.set_weights(current)
    return result


class Recorder(keras.callbacks.Callback):
    def __init__(self, net, ema, sets, size, every, epochs, log):
        super().__init__()
        self.net, self.ema, self.sets, self.size = net, ema, sets, size
        self.every, self.epochs, self.log = every, epochs, log
        self.rows, self.start = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - self.start,
               "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "val_accuracy": logs.get("val_accuracy"), "load1": os.getloadavg()[0]}
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            sets = self.sets if epoch + 1 == self.epochs else {"test": self.sets["test"]}
            row.update(score(self.net, self.ema, sets, self.size))
        self.rows.append(row)
        print(json.dumps(row), file=self.log, flush=True)


# ---------------------------------------------------------------- reference rate
def reference_step_seconds(images, labels, rows, size, steps=12, batch=32):
    """Seconds per training step of catsdogs' default recipe, measured now in this process."""
    net = default_net(images.shape[1])
    trainer = keras.Sequential([keras.Input(images.shape[1:]), keras_augmentation(1), net])
    compile_model(trainer, 1000, 10, 3e-3, 1e-4, 0.1)
    data = Batches(images, labels, rows, batch, shuffle=True, seed=0)
    x, y = data[0]
    trainer.train_on_batch(x, y)
    trainer.train_on_batch(x, y)
    start = time.perf_counter()
    for i in range(steps):
        x, y = data[i % len(data)]
        trainer.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--other", type=Path)
    parser.add_argument("--aug", choices=["none", "layers", "pipeline"], default="pipeline")
    parser.add_argument("--crop-min", type=float, default=0.35,
                        help="pipeline: smallest crop area share of random resized crop")
    parser.add_argument("--jitter", type=float, default=0.2,
                        help="pipeline: brightness/contrast/saturation factor range ±")
    parser.add_argument("--arch", choices=["default", "gap", "sepres"], default="default")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=0, help="train/test size; 0: as prepared")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--smoothing", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--ema", type=float, default=0.0, help="EMA momentum per step; 0: off")
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    images, labels, is_test = load_prepared(args.data)
    size = args.size or images.shape[1]
    train_rows, val_rows = stratified(labels, np.flatnonzero(~is_test), args.validation_split,
                                      args.seed)
    sets = {"test": (images[is_test], labels[is_test])}
    if args.other:
        other_images, other_labels, _ = load_prepared(args.other)
        sets["other"] = (other_images, other_labels)

    ref_before = reference_step_seconds(images, labels, train_rows, size)
    keras.utils.set_random_seed(args.seed)
    net = build(args.arch, size, args.width)
    augment = None
    trainer = net
    if args.aug == "layers":
        trainer = keras.Sequential([keras.Input((size, size, 3)), keras_augmentation(args.seed),
                                    net])
    elif args.aug == "pipeline":
        augment = {"crop_min": args.crop_min, "jitter": args.jitter}
    threads = {"workers": args.workers, "use_multiprocessing": False} if args.workers > 1 else {}
    train = Batches(images, labels, train_rows, args.batch_size, shuffle=True, seed=args.seed,
                    augment=augment, size=size, **threads)
    val = Batches(images, labels, val_rows, 128, shuffle=False, seed=0, size=size)
    steps = len(train)
    compile_model(trainer, steps * args.epochs, steps * args.warmup_epochs, args.lr,
                  args.weight_decay, args.smoothing)
    ema = WeightEMA(net, args.ema) if args.ema > 0 else None
    recorder = Recorder(net, ema, sets, size, args.eval_every, args.epochs, sys.stdout)
    callbacks = ([ema] if ema else []) + [recorder]
    started = time.perf_counter()
    trainer.fit(train, validation_data=val, epochs=args.epochs, callbacks=callbacks, verbose=0)
    wall = time.perf_counter() - started
    ref_after = reference_step_seconds(images, labels, train_rows, size)
    epoch_seconds = [row["seconds"] for row in recorder.rows[1:]] or [recorder.rows[0]["seconds"]]
    ref_epoch = (ref_before + ref_after) / 2 * steps
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "params": net.count_params(), "train_photos": len(train_rows), "size": size,
        "wall_s": wall, "median_epoch_s": float(np.median(epoch_seconds)),
        "reference_epoch_s": ref_epoch, "ref_step_before": ref_before, "ref_step_after": ref_after,
        "epoch_ratio_vs_default": float(np.median(epoch_seconds)) / ref_epoch,
        "final": recorder.rows[-1], "rows": recorder.rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
