"""Epoch time inside ``fit`` of four recipe set-ups, measured back to back in one process.

Each set-up trains one warm-up epoch, then one timed epoch, on the prepared non-test photos
(no validation), in two rounds in alternating order, so that the machine's load affects them
alike. Example:
    python benchmarks/recipes/fit_rates.py --data /tmp/acc/p128
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from train_recipe import Batches, build, compile_model, keras, keras_augmentation, load_prepared

SETUPS = {
    "default + Keras layers": ("default", "layers", 0),
    "default + uint8 pipeline, 2 threads": ("default", "pipeline", 2),
    "sepres + uint8 pipeline, 2 threads": ("sepres", "pipeline", 2),
    "sepres + uint8 pipeline, main thread": ("sepres", "pipeline", 0),
}


def epoch_seconds(images, labels, rows, arch, aug, workers) -> float:
    size = images.shape[1]
    net = build(arch, size, 16)
    trainer = net
    if aug == "layers":
        trainer = keras.Sequential([keras.Input((size, size, 3)), keras_augmentation(1), net])
    threads = {"workers": workers, "use_multiprocessing": False} if workers > 1 else {}
    augment = {"crop_min": 0.35, "jitter": 0.2} if aug == "pipeline" else None
    data = Batches(images, labels, rows, 32, shuffle=True, seed=1, augment=augment, **threads)
    compile_model(trainer, 1000, 10, 3e-3, 1e-4, 0.1)
    trainer.fit(data, epochs=1, verbose=0)
    started = time.perf_counter()
    trainer.fit(data, epochs=1, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=640)
    args = parser.parse_args()
    images, labels, is_test = load_prepared(args.data)
    rows = np.flatnonzero(~is_test)[: args.photos]
    names = list(SETUPS)
    for round_ in range(2):
        for name in names if round_ == 0 else names[::-1]:
            seconds = epoch_seconds(images, labels, rows, *SETUPS[name])
            print(f"round {round_ + 1} | {name} | {seconds:.1f} s | {len(rows) / seconds:.0f} "
                  f"photos/s | load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
