"""Which test-time views pay (issue 12): score a trained model's photos under several view
sets (the photo, central crops resized back, and mirrors) and print the accuracy of each.

``--data NAME:FOLDER:PART`` is a prepared dataset at the model's size and ``validation``
(the rows the model's training validated on: the split ``train`` made with the model's seed
and ``--validation-split``), ``test`` (the ``prepare --test-fraction`` split) or ``all``.
Choose the views on ``validation``, then report them on ``test`` and on other photos: the
held-out photos must not choose. Predictions go through :class:`catsdogs.predict.Predictor`
(model.onnx, else model.keras), with the views of :func:`catsdogs.tta.central_crop`.

Example (RESULTS.md, "Test-time augmentation with six views"):

    python benchmarks/tta_views.py --model /tmp/acc/s5/model-default-s1 \\
        --data val:/tmp/acc/s5/prepared-s1-default:validation \\
        --data held:/tmp/acc/s5/prepared-s1-default:test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from score_at_size import test_rows  # noqa: E402  (this folder's script)

from catsdogs.config import TrainConfig  # noqa: E402
from catsdogs.predict import Predictor  # noqa: E402
from catsdogs.train import split_rows  # noqa: E402
from catsdogs.tta import central_crop, mirrored  # noqa: E402
from data_prep.store import read_dataset  # noqa: E402

# name: (central crop shares, with mirrors)
VIEW_SETS = {
    "plain": ((1.0,), False),
    "mirror": ((1.0,), True),
    "90% + mirrors": ((0.9,), True),
    "100/90% + mirrors": ((1.0, 0.9), True),
    "100/80% + mirrors": ((1.0, 0.8), True),
    "100/90/80% + mirrors (--tta)": ((1.0, 0.9, 0.8), True),
    "100/90/80/70% + mirrors": ((1.0, 0.9, 0.8, 0.7), True),
}
SHARES = sorted({share for shares, _ in VIEW_SETS.values() for share in shares}, reverse=True)


def rows_of(dataset, part: str, model_dir: Path) -> np.ndarray:
    manifest = dataset.manifest
    if part == "all":
        return np.arange(len(manifest))
    if part == "test":
        return test_rows(dataset)
    training = json.loads((model_dir / "model.json").read_text())["training"]
    config = TrainConfig(seed=training["seed"], validation_split=training["validation_split"])
    return split_rows(dataset, config).validation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder")
    parser.add_argument("--data", action="append", required=True,
                        help="NAME:FOLDER:validation|test|all")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model)
    for spec in args.data:
        name, folder, part = spec.split(":")
        dataset = read_dataset(Path(folder))
        rows = rows_of(dataset, part, args.model)
        images = np.asarray(dataset.images[rows])
        truth = dataset.manifest["label"].to_numpy()[rows]
        views = {}
        for share in SHARES:
            crop = central_crop(images, share)
            views[share] = (predictor.probabilities(crop), predictor.probabilities(mirrored(crop)))
        for label, (shares, mirror) in VIEW_SETS.items():
            scores = [views[share][0] for share in shares]
            scores += [views[share][1] for share in shares] if mirror else []
            accuracy = np.mean(np.argmax(np.mean(scores, axis=0), axis=1) == truth)
            print(f"{name}\t{len(rows)}\t{label}\t{accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
