"""Where a training epoch's time goes (issue 12), all measured in one process.

1. A plain 3×3 Conv2D, forward and backward (weights and input), GFLOP/s: the arithmetic rate
   the CPU's convolutions reach here, the yardstick for the rest.
2. The training step (batch 32, AdamW) on in-memory uint8 batches of catsdogs' default network
   (``build_model(ModelConfig())``: blocks in the conv-pool-norm order), of the same network in
   the textbook conv-norm-pool order (the default before issue 12), and of the strided
   separable/residual net of benchmarks/recipes/train_recipe.py: without augmentation, with
   catsdogs' Keras augmentation layers (``--augment layers``), and with catsdogs' uint8
   augmentation (``--augment crop``, ``catsdogs.data.augment_batch``) done in the same thread
   before each step. Photos/s, GFLOP/s (convolution and dense arithmetic, forward + backward
   = 3× forward) and their share of the plain-Conv2D rate. The default network once more in
   bfloat16 (``--precision bfloat16``: Keras' ``mixed_bfloat16`` policy, what ``--budget``
   trains in on a CPU with native bfloat16), its share still of the float32 plain rate; the
   plain Conv2D in bfloat16 is reported beside it. The two plain Conv2D and every training
   set-up are timed once a round, in turn, for ``--rounds`` rounds (``timing.alternated``):
   the figures are the median with the range, and each round's share is of that round's
   plain rate, so a host whose speed drifts cannot favour the set-ups timed first.
3. Data feeding alone: photos/s of reading batches from the memory-mapped images.npy, and of
   the uint8 augmentation pipeline alone.
4. Per layer: forward + backward time of each layer of the default network (and of each
   augmentation layer, forward only) in isolation, at its real input shape and batch 32.

The machine may be shared: the load average is printed beside the figures; compare figures
measured in the same run only.

Example:
    python benchmarks/epoch_profile.py --data /tmp/acc/p128 --markdown /tmp/acc/profile.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "recipes"))
sys.path.insert(0, str(Path(__file__).parent.parent))
from timing import alternated, median_and_range, rounds_option, timed  # noqa: E402
from train_recipe import load_prepared, sepres_net  # noqa: E402

from catsdogs.config import ModelConfig  # noqa: E402
from catsdogs.data import ImageBatches  # noqa: E402
from catsdogs.model import build_augmentation, build_model  # noqa: E402

BATCH = 32


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds × 2 per photo of the Conv2D, SeparableConv2D and Dense layers."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
            continue
        shape = layer.output.shape if hasattr(layer, "output") else None
        if isinstance(layer, layers.SeparableConv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            c_in = layer.input.shape[-1]
            total += 2 * shape[1] * shape[2] * c_in * (k + shape[3])
        elif isinstance(layer, layers.Conv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * shape[1] * shape[2] * shape[3] * layer.input.shape[-1] * k
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * shape[-1]
    return total


def conv_step(dtype_policy: str = "float32") -> tuple[Callable[[], object], float]:
    """(step, FLOP per call): one 3×3 same-padding Conv2D 64→64 at 64×64, batch 32, forward
    + backward, computed in ``dtype_policy``'s compute dtype."""
    conv = layers.Conv2D(64, 3, padding="same", dtype=dtype_policy)
    x = tf.cast(tf.random.uniform((BATCH, 64, 64, 64)), conv.compute_dtype)
    conv.build(x.shape)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(tf.cast(y, "float32"))
        return tape.gradient(loss, [x, conv.kernel, conv.bias])

    return step, 3 * 2 * BATCH * 64 * 64 * 64 * 64 * 9


def train_step(net: keras.Model, augmentation, images: np.ndarray, labels: np.ndarray,
               pipeline: ImageBatches | None = None) -> Callable[[], None]:
    """One training step (batch 32) of ``net`` per call, behind ``augmentation`` layers or
    fed by ``pipeline``; the batches go round ``images``."""
    size = images.shape[1]
    trainer = net if augmentation is None else keras.Sequential(
        [keras.Input((size, size, 3)), augmentation, net])
    trainer.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                    loss=keras.losses.BinaryCrossentropy(label_smoothing=0.1))
    batches = [(images[i:i + BATCH], labels[i:i + BATCH].reshape(-1, 1).astype("float32"))
               for i in range(0, len(images) - BATCH + 1, BATCH)]
    state = {"i": 0}

    def step():
        index = state["i"] % len(batches)
        state["i"] += 1
        x, y = pipeline[index] if pipeline is not None else batches[index]
        trainer.train_on_batch(x, y)

    return step


NETWORKS = ("default (conv-pool-norm)", "textbook order (conv-norm-pool)", "sepres",
            "default in bfloat16")
VARIANTS = ("no augmentation", "Keras augmentation layers", "uint8 pipeline")


def make_network(name: str, size: int) -> keras.Model:
    if name == "sepres":
        return sepres_net(size)
    order = "conv-norm-pool" if name.startswith("textbook") else "conv-pool-norm"
    policy = "mixed_bfloat16" if name.endswith("bfloat16") else None
    return build_model(ModelConfig(image_size=size, block_order=order), dtype_policy=policy)


def training_setups(images: np.ndarray, labels: np.ndarray
                    ) -> dict[tuple[str, str], tuple[float, Callable[[], None]]]:
    """(network, augmentation) → (FLOP per trained photo, training step)."""
    size = images.shape[1]
    setups = {}
    for name in NETWORKS:
        flops = 3 * forward_flops(make_network(name, size))
        for variant in VARIANTS:
            if name in ("sepres", "default in bfloat16") and variant.startswith("Keras"):
                continue
            augmentation = build_augmentation(1) if variant.startswith("Keras") else None
            pipeline = None
            if variant == "uint8 pipeline":
                pipeline = ImageBatches(images, labels, np.arange(len(images)), BATCH,
                                        shuffle=True, seed=0, augment=True)
            step = train_step(make_network(name, size), augmentation, images, labels, pipeline)
            setups[(name, variant)] = (flops, step)
    return setups


def rate_report(images: np.ndarray, labels: np.ndarray, seconds: float, rounds: int
                ) -> list[str]:
    """The plain Conv2D rates and the training table, every set-up timed once a round in turn
    (``timing.alternated``); each round's share is of that round's float32 plain rate."""
    setups = training_setups(images, labels)
    (conv, conv_flops), (conv16, conv16_flops) = conv_step(), conv_step("mixed_bfloat16")
    steps = {"conv": conv, "conv16": conv16,
             **{key: step for key, (_, step) in setups.items()}}
    times = alternated(steps, seconds, rounds)
    conv_rates = [conv_flops / t / 1e9 for t in times["conv"]]
    out = [f"Plain 3×3 Conv2D 64→64 at 64×64, forward + backward: **{median_and_range(conv_rates)} "
           f"GFLOP/s**; the same in bfloat16: "
           f"{median_and_range([conv16_flops / t / 1e9 for t in times['conv16']])} GFLOP/s "
           f"(median of {rounds} rounds, range; load {load()})", "",
           "| network | augmentation | MFLOP per trained photo | training photos/s "
           "| GFLOP/s | share of plain Conv2D |", "|---|---|---|---|---|---|"]
    for (name, variant), (flops, _) in setups.items():
        rates = [BATCH / t for t in times[(name, variant)]]
        shares = [rate * flops / 1e9 / plain for rate, plain in zip(rates, conv_rates, strict=True)]
        out.append(f"| {name} | {variant} | {flops / 1e6:.0f} | {median_and_range(rates)} | "
                   f"{float(np.median(rates)) * flops / 1e9:.1f} | "
                   f"{median_and_range([100 * share for share in shares], '{:.0f}%')} |")
    return [*out, ""]


def feeding_rate(data: ImageBatches, seconds: float) -> float:
    state = {"i": 0}

    def step():
        data[state["i"] % len(data)]
        state["i"] += 1

    return BATCH / timed(step, seconds, warmup=1)


def layer_costs(net: keras.Sequential, seconds: float) -> list[tuple[str, str, float]]:
    """(name, input shape, ms per batch of forward + backward) for each layer alone."""
    rows = []
    for layer in net.layers:
        shape = (BATCH, *layer.input.shape[1:])
        x = tf.random.uniform(shape, 0, 1)

        @tf.function
        def step(layer=layer, x=x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, "float32"))
            return tape.gradient(loss, [x, *layer.trainable_weights])

        rows.append((layer.name, "×".join(str(d) for d in shape[1:]),
                     timed(step, seconds) * 1000))
    return rows


def augmentation_costs(size: int, seconds: float) -> list[tuple[str, float]]:
    rows = []
    x = tf.random.uniform((BATCH, size, size, 3), 0, 255)
    for layer in build_augmentation(1).layers:
        @tf.function
        def step(layer=layer):
            return layer(x, training=True)

        rows.append((layer.name, timed(step, seconds) * 1000))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--rounds", type=rounds_option, default=2,
                        help="time every training set-up this many times, in turn")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    images, labels, _ = load_prepared(args.data)
    images, labels = images[:640], labels[:640]
    size = images.shape[1]
    out = [f"epoch_profile: {args.data} ({size} px), batch {BATCH}, {os.cpu_count()} CPUs, "
           f"TF {tf.__version__}, Keras {keras.__version__}; load average at start {load()}", ""]

    out += rate_report(images, labels, args.seconds, args.rounds)

    plain = ImageBatches(np.load(args.data / "images.npy", mmap_mode="r"), labels,
                         np.arange(len(images)), BATCH, shuffle=True, seed=0)
    augmented = ImageBatches(images, labels, np.arange(len(images)), BATCH, shuffle=True,
                             seed=0, augment=True)
    out += [f"Data feeding alone (one thread): memory-mapped batches "
            f"{feeding_rate(plain, args.seconds):.0f} photos/s; uint8 flip + random resized "
            f"crop + colour jitter {feeding_rate(augmented, args.seconds):.0f} photos/s "
            f"(load {load()})", ""]

    for order in ("conv-pool-norm", "conv-norm-pool"):
        out += [f"Per layer of the default network in the {order} order, alone, forward + "
                "backward, batch 32:", "",
                "| layer | input | ms per batch | share |", "|---|---|---|---|"]
        net = build_model(ModelConfig(image_size=size, block_order=order))
        costs = layer_costs(net, args.seconds / 4)
        total = sum(ms for _, _, ms in costs)
        out += [f"| {name} | {shape} | {ms:.1f} | {ms / total:.0%} |"
                for name, shape, ms in costs]
        out += [f"| sum | | {total:.1f} | |", ""]
    out += ["Keras augmentation layers, forward only (training=True), batch 32:", "",
            "| layer | ms per batch |", "|---|---|"]
    out += [f"| {name} | {ms:.1f} |" for name, ms in augmentation_costs(size, args.seconds / 4)]
    out += ["", f"load average at the end {load()}"]
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
