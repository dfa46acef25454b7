"""Training images/s of finished `catsdogs train` runs, from their model folders.

    python benchmarks/train_rate.py MODEL_DIR [MODEL_DIR...]

Images/s is the number of training photos over the median epoch time in history.csv, the
first epoch (tracing, compilation, warm-up) left out when there are several.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def images_per_second(model_dir: Path) -> tuple[float, dict, list[float]]:
    info = json.loads((model_dir / "model.json").read_text())
    with open(model_dir / "history.csv", newline="") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    timed = seconds[1:] or seconds
    return info["num_train"] / statistics.median(timed), info, seconds


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for folder in map(Path, sys.argv[1:]):
        rate, info, _ = images_per_second(folder)
        print(f"{folder}: {rate:8.1f} training images/s  ({info['backend']}, {info['device']}, "
              f"{info['image_size']} px, batch {info['training']['batch_size']})")


if __name__ == "__main__":
    main()
