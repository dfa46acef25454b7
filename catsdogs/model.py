"""``build_model(config)``: the configurable Conv2D/MaxPooling2D/Flatten/Dense network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig

if TYPE_CHECKING:
    import keras


def build_model(config: ModelConfig) -> keras.Sequential:
    """Build (not compile) the classifier described by ``config``.

    Pixels arrive as 0..255 RGB and are scaled to [0, 1] by the first layer, so a saved model
    needs no separate preprocessing. Each block is Conv2D + MaxPooling2D, the filters doubling
    from block to block; then Flatten, the hidden Dense layers, and one sigmoid unit for two
    classes (softmax over ``num_classes`` otherwise).
    """
    keras = import_keras()
    from keras import layers

    config.validate()
    stack: list = [
        keras.Input(shape=(config.image_size, config.image_size, 3), name="image"),
        layers.Rescaling(1.0 / 255, name="rescale"),
    ]
    for block in range(config.blocks):
        stack.append(
            layers.Conv2D(
                config.filters * 2**block,
                config.kernel_size,
                padding=config.padding,
                activation=config.activation,
                name=f"block{block + 1}_conv",
            )
        )
        stack.append(layers.MaxPooling2D(config.pool_size, name=f"block{block + 1}_pool"))
    stack.append(layers.Flatten(name="flatten"))
    for index, units in enumerate(config.dense):
        if config.dropout_rate > 0:
            stack.append(layers.Dropout(config.dropout_rate, name=f"dropout{index + 1}"))
        stack.append(layers.Dense(units, activation=config.activation, name=f"dense{index + 1}"))
    if config.dense and config.dropout_rate > 0:
        stack.append(layers.Dropout(config.dropout_rate, name="dropout_out"))
    if config.num_classes == 2:
        stack.append(layers.Dense(1, activation="sigmoid", name="output"))
    else:
        stack.append(layers.Dense(config.num_classes, activation="softmax", name="output"))
    return keras.Sequential(stack, name="catsdogs")


def summary_lines(model: keras.Model) -> list[str]:
    """The Keras parameter summary (layer table and totals) as plain text lines."""
    lines: list[str] = []
    # 78 columns: Keras captures the table in an 80-column console when print_fn is given.
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=78)
    return "\n".join(lines).splitlines()
