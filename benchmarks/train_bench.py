"""Training throughput and memory: catsdogs' streaming path against a plain Keras script.

    python benchmarks/train_bench.py --data prepared [--epochs 3] [--backends tensorflow,jax]
    python benchmarks/train_bench.py --data prepared --memory   # 2,000 vs 20,000 photos

Each measurement runs in its own subprocess (``--worker``), so that peak memory is its own.

* ``catsdogs``: :func:`catsdogs.train.train` — batches streamed from the memory-mapped
  ``images.npy`` by a ``PyDataset``, checkpoints and all.
* ``plain``: what a hand-written script does — ``np.load`` the images, convert them to one
  float32 array, ``model.fit(x, y, validation_data=...)``.

Both train the same network (the default recipe's, built by :func:`catsdogs.model.build_model`)
on the same split, without augmentation (so that only the data path differs), with the same
batch size and optimizer. Images per second count training photos per second of an epoch,
validation included, over the epochs after the first (which compiles). Peak anonymous memory
(``RssAnon``: heap, arrays, not the file pages of the memory map) is sampled every 20 ms.

``--memory`` tiles the prepared photos ten times into a temporary dataset (outside the
repository) and reports the peak for one epoch of catsdogs over 2,000 and over 20,000 photos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PeakAnon:
    """Samples this process's RssAnon (from /proc/self/status) in a thread; keeps the max."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_kib() -> int:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.current_kib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.current_kib())


def worker(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process. Prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    with PeakAnon() as peak:
        from catsdogs.backend import keras as import_keras
        from catsdogs.config import ModelConfig, TrainConfig

        keras = import_keras()
        model_config = ModelConfig()
        train_config = TrainConfig(epochs=args.epochs, augment=False, lr_schedule="constant",
                                   jit_compile=args.jit)
        baseline_kib = peak.current_kib()
        if args.worker == "catsdogs":
            from catsdogs.train import train

            out = Path(tempfile.mkdtemp(prefix="bench-model-")) / "model"
            result = train(args.data, out, model_config, train_config)
            seconds = [row["seconds"] for row in result.history]
            num_train = result.num_train
            shutil.rmtree(out.parent, ignore_errors=True)
        else:
            import numpy as np

            from catsdogs.model import build_model
            from catsdogs.train import make_optimizer, split_rows
            from data_prep.store import read_dataset

            dataset = read_dataset(args.data)
            split = split_rows(dataset, train_config)
            labels = dataset.manifest["label"].to_numpy().astype("float32")
            # The plain script: every photo in RAM as float32.
            images = np.load(Path(args.data) / "images.npy")
            x_train = images[split.train].astype("float32")
            x_val = images[split.validation].astype("float32")
            del images
            model_config.image_size = dataset.image_size
            keras.utils.set_random_seed(train_config.seed)
            model = build_model(model_config)
            model.compile(
                optimizer=make_optimizer("adamw", train_config.learning_rate,
                                         train_config.weight_decay),
                loss=keras.losses.BinaryCrossentropy(label_smoothing=0.1),
                metrics=["accuracy"],
                jit_compile={"auto": "auto", "on": True, "off": False}[args.jit],
            )
            seconds: list[float] = []

            class Timer(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    self.started = time.perf_counter()

                def on_epoch_end(self, epoch, logs=None):
                    seconds.append(time.perf_counter() - self.started)

            model.fit(x_train, labels[split.train], batch_size=train_config.batch_size,
                      epochs=args.epochs, validation_data=(x_val, labels[split.validation]),
                      callbacks=[Timer()], verbose=0)
            num_train = len(split.train)
    steady = seconds[1:] or seconds
    return {
        "path": args.worker,
        "backend": keras.backend.backend(),
        "jit_compile": args.jit,
        "num_train": int(num_train),
        "epochs": len(seconds),
        "epoch_seconds": [round(s, 2) for s in seconds],
        "images_per_second": round(num_train * len(steady) / sum(steady), 1),
        "peak_anon_mib": round(peak.peak_kib / 1024, 1),
        "anon_after_import_mib": round(baseline_kib / 1024, 1),
    }


def run_worker(data: Path, path: str, backend: str, jit: str, epochs: int) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, __file__, "--worker", path, "--data", str(data),
               "--epochs", str(epochs), "--jit", jit]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"path": path, "backend": backend, "jit_compile": jit,
                "error": " | ".join(tail) or f"exit {done.returncode}"}
    return json.loads(lines[-1])


def tile_dataset(source: Path, times: int, dest: Path) -> Path:
    """A prepared dataset holding every photo of ``source`` ``times`` times."""
    import numpy as np
    import pandas as pd

    images = np.load(source / "images.npy", mmap_mode="r")
    dest.mkdir(parents=True)
    tiled = np.lib.format.open_memmap(dest / "images.npy", mode="w+", dtype=np.uint8,
                                      shape=(len(images) * times, *images.shape[1:]))
    for copy in range(times):
        tiled[copy * len(images):(copy + 1) * len(images)] = images
    tiled.flush()
    del tiled
    manifest = pd.read_csv(source / "manifest.csv", keep_default_na=False)
    manifest = pd.concat([manifest] * times, ignore_index=True)
    manifest["index"] = range(len(manifest))
    manifest.to_csv(dest / "manifest.csv", index=False)
    shutil.copy(source / "skipped.csv", dest / "skipped.csv")
    info = json.loads((source / "dataset.json").read_text())
    info["num_images"] = len(manifest)
    info["fingerprint"] = f"{info.get('fingerprint')}-tiled-{times}"
    (dest / "dataset.json").write_text(json.dumps(info, indent=2))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("prepared"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow")
    parser.add_argument("--jit", default="off,on", help="jit_compile settings to run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat each pair, alternating which runs first (a loaded "
                             "machine's load changes from minute to minute)")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of one epoch over the data and over it tiled x10")
    parser.add_argument("--worker", choices=["catsdogs", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="catsdogs-bench-") as tmp:
            big = tile_dataset(args.data, 10, Path(tmp) / "tiled")
            for data in (args.data, big):
                result = run_worker(data, "catsdogs", "tensorflow", "off", 1)
                print(json.dumps({"data": str(data), **result}), flush=True)
        return
    for backend in args.backends.split(","):
        for jit in args.jit.split(","):
            for round_number in range(args.rounds):
                paths = ("catsdogs", "plain") if round_number % 2 == 0 else ("plain", "catsdogs")
                for path in paths:
                    result = run_worker(args.data, path, backend, jit, args.epochs)
                    print(json.dumps({"round": round_number + 1, **result}), flush=True)


if __name__ == "__main__":
    main()
