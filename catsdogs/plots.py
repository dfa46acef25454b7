"""The PNGs of ``train`` (curves.png), ``evaluate`` and ``visualize``, drawn with
matplotlib's Agg backend (no display).

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


def curves_figure(rows: list[dict[str, Any]]) -> Any:
    """Loss and accuracy per epoch, training against validation, the best epoch marked;
    the epoch axis has whole-number ticks only."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            axis.plot(epochs, [row.get(key, float("nan")) for row in rows], marker=".",
                      label=label)
        best = [row["epoch"] for row in rows if row.get("best")]
        if best:
            axis.axvline(best[-1], color="grey", linestyle=":", label=f"best epoch {best[-1]}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def curves_png(rows: list[dict[str, Any]], path: Path) -> None:
    """:func:`curves_figure` saved as a PNG."""
    figure = curves_figure(rows)
    figure.savefig(path, dpi=100)
    pyplot().close(figure)


def shortened(name: str, limit: int = 20) -> str:
    """``name`` cut to at most ``limit`` characters with an ellipsis in the middle, keeping
    its start and its extension's side ("0123456789…cdef.jpg"), so captions do not run into
    each other."""
    if len(name) <= limit:
        return name
    tail = max(1, (limit - 1) // 3)
    head = limit - 1 - tail
    return f"{name[:head]}…{name[-tail:]}"


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
        if pixels.ndim == 3 and pixels.shape[-1] == 1:  # a gray dataset's pixels
            axes.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            axes.imshow(pixels)
        axes.set_title(caption, fontsize=9)
    figure.suptitle(f"The {len(shown)} most confidently wrong of {total_wrong} mistakes "
                    f"({total} photos)")
    save(figure, path)
