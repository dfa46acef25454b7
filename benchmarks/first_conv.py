"""The first block's convolution, computed other ways that give the same numbers (issue 12).

The default network's first convolution (3×3, 3 → 20 channels, same padding, at 128×128,
then 2×2 max pooling) runs far below the CPU's plain Conv2D rate: three input channels leave
oneDNN little to vectorize over (benchmarks/RESULTS.md, "Where an epoch's time goes"). This
script times the forward pass and the weight gradient of that convolution and its pooling,
batch 32, float32, against exact rewrites that keep the trained weights (a 3×3×3×20 kernel
and a bias) and the network unchanged, so that only the training step would change:

- ``padC``: the photo and the kernel padded with zero channels to C (4, 8, 16);
- ``s2d-2x2``: the photo rearranged 2×2 pixels → 12 channels at 64×64 (space to depth). Each
  of the four pixels of a pooling window is then a 2×2 convolution of those 12 channels with
  a kernel cut from the 3×3 one, and the pooled output is the largest of the four: the
  128×128×20 activation is never made;
- ``s2d-3x3``: the same as one 3×3 convolution of the 12 channels into 4 × 20 outputs, then
  the largest of each four.

Each rewrite's output and weight gradient are checked against the plain ones first. Then
every way is timed once a round, in turn, for ``--rounds`` rounds (``timing.alternated``),
so a slow spell of the host slows one round of every way rather than all of one way's.

Example:
    python benchmarks/first_conv.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
from timing import alternated, median_and_range, rounds_option  # noqa: E402

BATCH, SIDE, CHANNELS, FILTERS = 32, 128, 3, 20
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) of a pixel in its pooling window


def plain(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """The network's own layers: Conv2D (same padding) then 2×2 max pooling."""
    return tf.nn.max_pool2d(tf.nn.conv2d(x, kernel, 1, "SAME") + bias, 2, 2, "VALID")


def padded(channels: int) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """The same with the photo and the kernel padded to ``channels`` with zeros."""
    extra = channels - CHANNELS

    def block(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        kernel = tf.pad(kernel, [[0, 0], [0, 0], [0, extra], [0, 0]])
        return plain(x, kernel, bias)

    return block


def phase_kernels(kernel: tf.Tensor) -> list[tf.Tensor]:
    """For each pixel (a, b) of a pooling window, the 2×2 kernel over space-to-depth cells.

    The 3×3 window of output pixel (2i + a, 2j + b) starts at row 2i + a − 1, inside the
    4×4 pixels of cells i − 1 + a .. i + a (rows) at offset 1 − a: the 3×3 kernel padded to
    4×4 at that offset, then regrouped as 2×2 cells of (row, column, channel)."""
    kernels = []
    for a, b in PHASES:
        wide = tf.pad(kernel, [[1 - a, a], [1 - b, b], [0, 0], [0, 0]])  # 4×4×C×F
        cells = tf.reshape(wide, [2, 2, 2, 2, CHANNELS, FILTERS])  # cell row, p, cell col, q
        cells = tf.transpose(cells, [0, 2, 1, 3, 4, 5])
        kernels.append(tf.reshape(cells, [2, 2, 4 * CHANNELS, FILTERS]))
    return kernels


def s2d_2x2(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """Four 2×2 convolutions of the space-to-depth photo, the largest of the four."""
    cells = tf.nn.space_to_depth(x, 2)
    outputs = []
    for (a, b), phase in zip(PHASES, phase_kernels(kernel), strict=True):
        shifted = tf.pad(cells, [[0, 0], [1 - a, a], [1 - b, b], [0, 0]])
        outputs.append(tf.nn.conv2d(shifted, phase, 1, "VALID"))
    return tf.reduce_max(tf.stack(outputs), 0) + bias


def s2d_3x3(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """One 3×3 convolution of the space-to-depth photo into the four phases' outputs."""
    cells = tf.nn.space_to_depth(x, 2)
    wide = [tf.pad(phase, [[a, 1 - a], [b, 1 - b], [0, 0], [0, 0]])
            for (a, b), phase in zip(PHASES, phase_kernels(kernel), strict=True)]
    y = tf.nn.conv2d(cells, tf.concat(wide, -1), 1, "SAME")
    shape = tf.shape(y)
    return tf.reduce_max(tf.reshape(y, [shape[0], shape[1], shape[2], 4, FILTERS]), 3) + bias


def training_step(block, x, kernel, bias):
    """The block forward and the gradient of its weights (as in training: none for x)."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = block(x, kernel, bias)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [kernel, bias])

    return step


def check(steps: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """Each way's largest output difference and relative weight-gradient difference from the
    first (plain) way; a way that computes something else stops the script."""
    reference, (reference_grad, _) = next(iter(steps.values()))()
    scale = float(tf.reduce_max(tf.abs(reference_grad)))
    errors = {}
    for name, step in steps.items():
        output, (grad, _) = step()
        if not np.allclose(output, reference, atol=1e-4):
            raise SystemExit(f"{name} does not compute the same output")
        grad_error = float(tf.reduce_max(tf.abs(grad - reference_grad))) / scale
        if grad_error > 1e-4:
            raise SystemExit(f"{name} does not compute the same gradient ({grad_error:.1e})")
        errors[name] = float(tf.reduce_max(tf.abs(output - reference))), grad_error
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time each way this long")
    parser.add_argument("--rounds", type=rounds_option, default=3,
                        help="time every way this many times, in turn")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((BATCH, SIDE, SIDE, CHANNELS), dtype=np.float32))
    kernel = tf.Variable(rng.normal(0, 0.1, (3, 3, CHANNELS, FILTERS)).astype(np.float32))
    bias = tf.Variable(rng.normal(0, 0.1, FILTERS).astype(np.float32))
    ways = {"plain (Conv2D + MaxPool)": plain, "pad4": padded(4), "pad8": padded(8),
            "pad16": padded(16), "s2d-2x2": s2d_2x2, "s2d-3x3": s2d_3x3}
    steps = {name: training_step(block, x, kernel, bias) for name, block in ways.items()}
    errors = check(steps)
    times = alternated(steps, args.seconds, args.rounds)
    base = times["plain (Conv2D + MaxPool)"]
    print(f"load average {os.getloadavg()[0]:.1f}; batch {BATCH}, {SIDE}×{SIDE}×{CHANNELS} "
          f"→ {FILTERS}, float32, forward + weight gradient; median of {args.rounds} rounds "
          "(range), each round's ratio against that round's plain time")
    print("| way | ms per batch | against plain | largest output difference | "
          "largest gradient difference (relative) |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        ratios = [mine / plain_time for mine, plain_time in zip(seconds, base, strict=True)]
        output_error, grad_error = errors[name]
        print(f"| {name} | {median_and_range([t * 1000 for t in seconds], '{:.1f}')} | "
              f"{median_and_range(ratios, '{:.2f}×')} | {output_error:.1e} | {grad_error:.1e} |")


if __name__ == "__main__":
    main()
