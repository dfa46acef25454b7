"""The uint8 augmentation's own cost (issue 12): ``catsdogs.data.augment_batch`` in photos/s
with the jitter before 2026-12-07 (brightness, contrast and saturation 0.8–1.2, no gray
photos) and with today's (``data.JITTER``, ``data.GRAY_SHARE``), both timed in one process
in alternated rounds (``timing.alternated``), on the photos of a prepared dataset cropped
and resized to the training size as ``train`` does.

Example:
    python benchmarks/augment_cost.py --data /tmp/acc/p160 --size 128
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from timing import alternated, median_and_range, rounds_option  # noqa: E402

from catsdogs import data  # noqa: E402

BATCH, PHOTOS = 32, 256
BEFORE = ((0.8, 1.2), 0.0)


def augment_step(images: np.ndarray, size: int, jitter: tuple[float, float],
                 gray_share: float) -> Callable[[], None]:
    """Augment every batch of ``images`` once per call, with these ranges."""
    def step() -> None:
        for start in range(0, len(images), BATCH):
            data.augment_batch(images[start:start + BATCH], np.random.default_rng(start), size,
                               jitter_range=jitter, gray_share=gray_share)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--size", type=int, default=128, help="the training crops' size")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--rounds", type=rounds_option, default=5, help="alternated rounds")
    args = parser.parse_args(argv)
    images = np.load(args.data / "images.npy", mmap_mode="r")[:PHOTOS].copy()
    now = (data.JITTER, data.GRAY_SHARE)
    settings = {f"jitter {j[0]}–{j[1]}, gray share {g}": augment_step(images, args.size, j, g)
                for j, g in (BEFORE, now)}
    times = alternated(settings, args.seconds, args.rounds)
    print(f"augment_batch, {len(images)} photos of {images.shape[1]} px to {args.size} px, "
          f"batches of {BATCH}, {args.rounds} alternated rounds of {args.seconds} s:")
    for name, values in times.items():
        rates = [len(images) / seconds for seconds in values]
        print(f"  {name}: {median_and_range(rates, '{:,.0f}')} photos/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
