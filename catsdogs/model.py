"""``build_model(config)``: the configurable Conv2D/pooling network, and the training-only
augmentation wrapped around it."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig

if TYPE_CHECKING:
    import keras


def build_model(config: ModelConfig, dtype_policy: str | None = None,
                weights: str | None = None) -> keras.Sequential:
    """Build (not compile) the inference classifier described by ``config``.

    With ``config.backbone``, a pretrained network and a new head instead
    (:func:`catsdogs.backbone.build_transfer_model`; ``weights``: imagenet, none or a file;
    None: random).

    Pixels arrive as 0..255 (RGB, or gray for ``config.channels == 1``) and are scaled to
    [0, 1] by the first layer, so a saved model needs no separate preprocessing. Each block
    is Conv2D + MaxPooling2D or AveragePooling2D, with the block's filters, kernel size and
    padding, and BatchNormalization and an Activation when ``config.use_batch_norm``
    (otherwise the activation is the Conv2D's own; see :func:`conv_block` for the order);
    then the head (Flatten, or GlobalAveragePooling2D for the "gap"
    :attr:`~ModelConfig.head_type`), the hidden Dense layers with the same activation, a
    Dropout when ``dropout_rate`` is above 0, and one sigmoid unit for two classes (softmax
    otherwise). With no dropout and no batch normalization the layers are
    exactly a textbook's list, the Rescaling (no parameters) first.

    ``dtype_policy`` (e.g. ``"mixed_float16"``) applies to every layer but the output, which
    always computes in float32 so that probabilities are exact. The model holds no random
    layer besides Dropout (inactive at inference), so it exports as it is.
    """
    if config.backbone != "none":
        from catsdogs.backbone import build_transfer_model

        return build_transfer_model(config, weights, dtype_policy)
    keras = import_keras()
    from keras import layers

    config.validate()
    policy = {"dtype": dtype_policy} if dtype_policy else {}
    shape = (config.image_size, config.image_size, config.channels)
    stack: list = [
        keras.Input(shape=shape, name="image"),
        layers.Rescaling(1.0 / 255, name="rescale", **policy),
    ]
    for block in range(config.blocks):
        stack += conv_block(config, block, policy)
    if config.head_type == "gap":
        stack.append(layers.GlobalAveragePooling2D(name="gap", **policy))
    else:
        stack.append(layers.Flatten(name="flatten", **policy))
    for index, units in enumerate(config.dense):
        if config.dropout_rate > 0:
            stack.append(layers.Dropout(config.dropout_rate, name=f"dropout{index + 1}", **policy))
        stack.append(
            layers.Dense(units, activation=config.activation, name=f"dense{index + 1}", **policy)
        )
    if config.dropout_rate > 0:
        stack.append(layers.Dropout(config.dropout_rate, name="dropout_out", **policy))
    if config.num_classes == 2:
        stack.append(layers.Dense(1, activation="sigmoid", name="output", dtype="float32"))
    else:
        stack.append(
            layers.Dense(config.num_classes, activation="softmax", name="output", dtype="float32")
        )
    return keras.Sequential(stack, name="catsdogs")


def conv_block(config: ModelConfig, block: int, policy: dict[str, str]) -> list:
    """The layers of block number ``block`` (from 0): Conv2D (SeparableConv2D after the
    first block with ``conv="separable"``), then pooling, then
    BatchNormalization + Activation (``block_order`` conv-pool-norm, the default); or Conv2D,
    BatchNormalization + Activation, pooling (conv-norm-pool); without batch norm, Conv2D
    (with its activation) and pooling.

    Pooling first gives the same kind of network for a quarter of the normalization's and
    the activation's work: a ReLU commutes with max pooling exactly, and batch norm learns
    its statistics after the pooling instead of before."""
    from keras import layers

    batch_norm = config.use_batch_norm
    name = f"block{block + 1}"
    convolution = (layers.SeparableConv2D if config.conv == "separable" and block > 0
                   else layers.Conv2D)
    stack: list = [
        convolution(
            config.block_filters()[block],
            config.block_kernel_sizes()[block],
            padding=config.block_paddings()[block],
            activation=None if batch_norm else config.activation,
            use_bias=not batch_norm,
            name=f"{name}_conv",
            **policy,
        )
    ]
    pooling = layers.AveragePooling2D if config.pool == "avg" else layers.MaxPooling2D
    pool = pooling(config.pool_size, name=f"{name}_pool", **policy)
    if not batch_norm:
        return stack + [pool]
    # momentum 0.9: the moving statistics follow the weights within an epoch or two, so
    # validation is meaningful from the first epochs of a short run.
    norm = [layers.BatchNormalization(momentum=0.9, name=f"{name}_bn", **policy),
            layers.Activation(config.activation, name=f"{name}_act", **policy)]
    if config.block_order == "conv-pool-norm":
        return stack + [pool] + norm
    return stack + norm + [pool]


def build_augmentation(seed: int) -> keras.Sequential:
    """Random flips, rotations, zooms, shifts and contrast changes, seeded.

    These layers are active only in training; they are never part of the saved model (see
    :func:`build_trainer`).
    """
    keras = import_keras()
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed, name="flip"),
            layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1, name="rotate"),
            layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 2, name="zoom"),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3,
                                     name="translate"),
            layers.RandomContrast(0.2, seed=seed + 4, name="contrast"),
        ],
        name="augmentation",
    )


def build_trainer(model: keras.Model, augmentation: keras.Model | None,
                  any_size: bool = False) -> keras.Model:
    """The model that is trained: ``augmentation`` then ``model``, sharing ``model``'s weights.

    With ``any_size`` the trainer takes photos of any size (``model`` must: global average
    pooling), so that it trains on smaller crops than ``model``'s input and validates at
    ``model``'s size (``--train-scale``): a :class:`keras.Model` whose ``call`` runs
    ``model``'s own layers one after another, so that ``model``'s graph (its fixed input size,
    its summary, its export) stays as it was built. Only ``model`` (the inference network) is
    saved; the trainer exists for ``fit``.
    """
    keras = import_keras()
    if any_size:
        return any_size_trainer_class()(model, augmentation, name="catsdogs_trainer")
    if augmentation is None:
        return model
    return keras.Sequential(
        [keras.Input(shape=model.input_shape[1:], name="image"), augmentation, model],
        name="catsdogs_trainer",
    )


@functools.cache
def any_size_trainer_class() -> type:
    """The class of :func:`build_trainer`'s any-size trainer (made once Keras is loaded)."""
    keras = import_keras()

    class AnySizeTrainer(keras.Model):
        """``augmentation`` (optional) then the layers of ``network``, on photos of any
        size; the variables are ``network``'s (and the augmentation's)."""

        def __init__(self, network: keras.Model, augmentation: keras.Model | None = None,
                     **kwargs) -> None:
            super().__init__(**kwargs)
            self.network = network
            self.augmentation = augmentation
            self.built = True  # its variables are the built network's

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            # ``training`` passed on explicitly: batch normalization and dropout must train
            features = inputs
            if self.augmentation is not None:
                features = self.augmentation(features, training=training)
            for layer in self.network.layers:
                features = layer(features, training=training)
            return features

    return AnySizeTrainer


def summary_lines(model: keras.Model) -> list[str]:
    """The Keras parameter summary (layer table and totals) as plain text lines."""
    lines: list[str] = []
    # 78 columns: Keras captures the table in an 80-column console when print_fn is given.
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=78)
    return "\n".join(lines).splitlines()
