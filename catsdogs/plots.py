"""The PNGs of ``evaluate`` and ``visualize``, drawn with matplotlib's Agg backend (no display).

matplotlib is imported here only, when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, path: Path) -> None:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(figure)


def confusion_png(matrix: Sequence[Sequence[int]], classes: list[str], path: Path,
                  title: str = "") -> None:
    """Counts in a grid, true class down, predicted class across; the share of each row in
    colour, so the diagonal is dark when the model is right."""
    plt = pyplot()
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = 2.2 + 1.1 * len(classes)
    figure, axes = plt.subplots(figsize=(side + 1.2, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            axes.text(j, i, f"{int(counts[i, j])}\n{shares[i, j]:.0%}", ha="center",
                      va="center", color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 4 else 0)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix\n{title}" if title else "Confusion matrix")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    save(figure, path)


def grid_shape(count: int, columns: int = 4) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def mistakes_png(shown: list[tuple[np.ndarray, str]], path: Path, total_wrong: int,
                 total: int) -> None:
    """The most confidently wrong photos, each captioned with its true class and the score
    the model gave the class it said."""
    plt = pyplot()
    if not shown:
        figure, axes = plt.subplots(figsize=(4, 2))
        axes.axis("off")
        axes.text(0.5, 0.5, f"No mistakes on {total} photos.", ha="center", va="center",
                  fontsize=12)
        save(figure, path)
        return
    rows, columns = grid_shape(len(shown))
    figure, grid = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.1 * rows),
                                squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, (pixels, caption) in zip(grid.flat, shown, strict=False):
        axes.imshow(pixels)
        axes.set_title(caption, fontsize=9)
    figure.suptitle(f"The {len(shown)} most confidently wrong of {total_wrong} mistakes "
                    f"({total} photos)")
    save(figure, path)
