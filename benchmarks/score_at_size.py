"""Score a trained model that takes any input size (global average pooling) on photos
prepared at other sizes, with the same weights: how accuracy moves when a network predicts
at a larger size than it trained on (issue 12, ``--train-scale``).

Each ``--data`` is ``NAME:FOLDER:PART``: a prepared dataset at some size, and ``test`` (its
test split) or ``all`` (every photo). The network is rebuilt at the dataset's size from
model.json's settings, the weights copied from model.keras, and the photos predicted plain
and averaged with their mirror. ``--recalibrate FOLDER`` first re-estimates the batch-norm
statistics on that dataset's training rows at its size (two passes, no gradient), and scores
only the datasets of that size.

Example (the table in ACCURACY_NOTES.md, "Training smaller than predicting"):

    for s in 144 160 176 192; do
        catsdogs prepare /work/shared/data/catsdogs/train --out /tmp/acc/p$s --size $s \\
            --seed 1 --test-fraction 0.2 --quiet
    done
    python benchmarks/score_at_size.py --model /tmp/acc/s1/model-gap-s1 \\
        --data held160:/tmp/acc/p160:test --data held192:/tmp/acc/p192:test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent.parent))
import keras  # noqa: E402

from catsdogs.config import ModelConfig  # noqa: E402
from catsdogs.model import build_model  # noqa: E402
from data_prep.store import read_dataset  # noqa: E402


def test_rows(dataset) -> np.ndarray:
    """The rows of a prepared dataset's test split (ValueError when it has none)."""
    rows = dataset.test_rows()
    if not len(rows):
        raise ValueError(f"{dataset.path} has no test split (prepare --test-fraction)")
    return rows


def network_at(model_dir: Path, size: int) -> keras.Model:
    info = json.loads((model_dir / "model.json").read_text())
    trained = keras.saving.load_model(model_dir / "model.keras", compile=False)
    network = build_model(ModelConfig.from_dict({**info["model"], "image_size": size}))
    network.set_weights(trained.get_weights())
    return network


def recalibrate(network: keras.Model, folder: Path, passes: int = 2) -> None:
    dataset = read_dataset(folder)
    rows = dataset.training_rows()
    rng = np.random.default_rng(0)
    for _ in range(passes):
        order = rng.permutation(rows)
        for start in range(0, len(order), 32):
            network(np.asarray(dataset.images[np.sort(order[start:start + 32])]), training=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--data", action="append", required=True, help="NAME:FOLDER:test|all")
    parser.add_argument("--recalibrate", type=Path, help="a prepared dataset (see above)")
    args = parser.parse_args(argv)
    networks: dict[int, keras.Model] = {}
    only_size = read_dataset(args.recalibrate).image_size if args.recalibrate else None
    for spec in args.data:
        name, folder, part = spec.rsplit(":", 2)
        dataset = read_dataset(folder)
        size = int(dataset.image_size)
        if only_size is not None and size != only_size:
            continue
        if size not in networks:
            networks[size] = network_at(args.model, size)
            if args.recalibrate:
                recalibrate(networks[size], args.recalibrate)
        rows = test_rows(dataset) if part == "test" else np.arange(len(dataset.manifest))
        images = np.asarray(dataset.images[rows])
        labels = dataset.manifest["label"].to_numpy()[rows]
        plain = networks[size].predict(images, batch_size=64, verbose=0)[:, 0]
        mirrored = networks[size].predict(images[:, :, ::-1], batch_size=64, verbose=0)[:, 0]
        print(f"{name:14s} {size:4d} px  accuracy {np.mean((plain > 0.5) == labels):.4f}  "
              f"mirror TTA {np.mean(((plain + mirrored) / 2 > 0.5) == labels):.4f}  "
              f"({len(labels)} photos)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
