"""Pretrained backbones from Keras Applications, for ``train --backbone NAME``.

The backbone is built without its ImageNet classifier (``include_top=False``) and keeps its
own input preprocessing inside the model (MobileNetV3's ``Rescaling`` to [-1, 1],
EfficientNet's ``Rescaling`` + ``Normalization``), so the saved model takes 0..255 RGB pixels
like every catsdogs model and ``predict`` needs nothing extra. A new head follows it: global
average pooling, the optional hidden Dense layers, dropout, the output.

Weights: ``imagenet`` (Keras' release, downloaded once through ``keras.utils.get_file`` and
cached in ``~/.keras/models``), ``none`` (random), or a file: Keras' ImageNet ``.h5`` file
for that backbone downloaded by hand, or a ``.weights.h5`` written by ``save_weights`` from
the same backbone. The backbone is always built the same way (``weights=None``, then the
weights loaded), so a model trained from the download and one trained from the same file
given by hand are the same network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catsdogs.backend import keras as import_keras
from catsdogs.config import ModelConfig

if TYPE_CHECKING:
    import keras

# EfficientNet's ImageNet weights expect its Normalization layer to divide by the variance
# where Keras divides by the standard deviation; Keras adds a Rescaling layer to make up for
# it when it loads them itself. Folding the same factor into the stored variance instead
# keeps one architecture whatever the weights (see correct_normalization).
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """One Keras Applications network and where Keras publishes its ImageNet weights."""

    constructor: str  # the keras.applications function
    file_name: str  # Keras' ImageNet weights without the classifier ("no top")
    origin: str
    file_hash: str  # as keras.applications checks it
    options: dict[str, Any] = field(default_factory=dict)
    variance_fix: bool = False  # see IMAGENET_STDDEV_RGB


BACKBONES = {
    "mobilenet_v3_small": BackboneSpec(
        "MobileNetV3Small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836", {"include_preprocessing": True}),
    "efficientnet_b0": BackboneSpec(
        "EfficientNetB0", "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        "50bc09e76180e00e4465e1a485ddc09d", variance_fix=True),
}


def spec_of(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


def weights_file(weights: str) -> Path | None:
    """The file ``--weights`` names, or None for ``imagenet``/``none``; FileNotFoundError
    when it names a file that is not there."""
    if weights in ("imagenet", "none"):
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"--weights {weights}: no such file (use imagenet, none, or the path of a "
            "weights file)")
    return path


def download_imagenet(name: str) -> Path:
    """Keras' ImageNet weights of backbone ``name``: cached, or downloaded and checked.

    ValueError, in one line that says how to pass the file by hand, when it cannot be
    downloaded (no network, a proxy, a full disk...).
    """
    keras = import_keras()
    spec = spec_of(name)
    try:
        return Path(keras.utils.get_file(spec.file_name, spec.origin, cache_subdir="models",
                                         file_hash=spec.file_hash))
    except Exception as error:  # urllib, OSError, hash mismatch: all mean "no weights"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        # Keras' "URL fetch failure on <url>: None -- [Errno -2] ...": the URL is said below
        reason = reason.rsplit(" -- ", 1)[-1]
        raise ValueError(
            f"cannot download the ImageNet weights of {name} ({reason}); download {spec.origin} "
            f"on a machine with network access and pass the file with --weights FILE, or use "
            "--weights none to start from random weights") from None


def build_backbone(name: str, image_size: int, weights: str | None = None,
                   dtype_policy: str | None = None) -> keras.Model:
    """The backbone without its classifier, for ``image_size`` RGB images of 0..255, with
    ``weights`` (``imagenet``, ``none``/None, or a file path) loaded."""
    keras = import_keras()
    spec = spec_of(name)
    weights = weights or "none"
    path = weights_file(weights)  # before any work: a missing file is a one-line error
    if weights == "imagenet":
        path = download_imagenet(name)
    previous = keras.config.dtype_policy()
    if dtype_policy:  # Keras Applications take the global policy, not a dtype argument
        keras.config.set_dtype_policy(dtype_policy)
    try:
        model = getattr(keras.applications, spec.constructor)(
            input_shape=(image_size, image_size, 3), include_top=False, weights=None,
            **spec.options)
    finally:
        keras.config.set_dtype_policy(previous)
    if path is not None:
        load_backbone_weights(model, name, path)
    exportable_normalization(model)
    return model


def load_backbone_weights(model: keras.Model, name: str, path: Path) -> None:
    """Load ``path`` into the backbone: a Keras 3 ``.weights.h5`` as it is, any other file as
    Keras' ImageNet release (with EfficientNet's normalization corrected)."""
    try:
        model.load_weights(str(path))
    except Exception as error:  # h5py and Keras raise many types for a wrong file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        raise ValueError(f"cannot load {path} into {name}: {reason}") from None
    if spec_of(name).variance_fix and not path.name.endswith(".weights.h5"):
        correct_normalization(model)


def correct_normalization(model: keras.Model) -> None:
    """Multiply the input Normalization layer's variance by ImageNet's standard deviations:
    what Keras' extra Rescaling layer does for EfficientNet's ImageNet weights."""
    keras = import_keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "adapt_variance"):
            variance = keras.ops.convert_to_numpy(layer.adapt_variance)
            layer.adapt_variance.assign(
                variance * np.asarray(IMAGENET_STDDEV_RGB, dtype=variance.dtype))
            layer.finalize_state()


def exportable_normalization(model: keras.Model) -> None:
    """Let Normalization layers read their mean and variance from their variables.

    Keras keeps them as tensors computed once from the variables, which the ONNX converter
    sees as inputs it is not given; read from the variables they are exported as constants,
    and stay in step with the variables (a checkpoint restored into them, for one).
    """
    keras = import_keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "adapt_mean"):
            layer.mean = layer.adapt_mean
            layer.variance = layer.adapt_variance


def build_transfer_model(config: ModelConfig, weights: str | None = None,
                         dtype_policy: str | None = None) -> keras.Sequential:
    """The backbone (frozen) and a new head: global average pooling, the hidden Dense layers
    of ``config.dense``, dropout, and the output (sigmoid for two classes, else softmax)."""
    keras = import_keras()
    from keras import layers

    config.validate()
    policy = {"dtype": dtype_policy} if dtype_policy else {}
    backbone = build_backbone(config.backbone, config.image_size, weights, dtype_policy)
    backbone.trainable = False
    stack: list = [
        keras.Input(shape=(config.image_size, config.image_size, 3), name="image"),
        backbone,
        layers.GlobalAveragePooling2D(name="gap", **policy),
    ]
    for index, units in enumerate(config.dense):
        if config.dropout_rate > 0:
            stack.append(layers.Dropout(config.dropout_rate, name=f"dropout{index + 1}", **policy))
        stack.append(layers.Dense(units, activation=config.activation, name=f"dense{index + 1}",
                                  **policy))
    if config.dropout_rate > 0:
        stack.append(layers.Dropout(config.dropout_rate, name="dropout_out", **policy))
    units, activation = (1, "sigmoid") if config.num_classes == 2 else \
        (config.num_classes, "softmax")
    stack.append(layers.Dense(units, activation=activation, name="output", dtype="float32"))
    return keras.Sequential(stack, name="catsdogs")


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The nested backbone of a transfer model, or None for a plain catsdogs model."""
    keras = import_keras()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def unfreeze_top(model: keras.Model, count: int) -> int:
    """Make the last ``count`` layers of the backbone trainable, all but BatchNormalization,
    which stays frozen and so in inference mode (its moving statistics kept: updating them
    from small batches would undo what the backbone learned). Returns how many layers with
    weights are now trainable in the backbone."""
    keras = import_keras()
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError("this model has no backbone to fine-tune")
    backbone.trainable = True
    top = set(id(layer) for layer in backbone.layers[-count:])
    for layer in backbone.layers:
        layer.trainable = (id(layer) in top
                           and not isinstance(layer, keras.layers.BatchNormalization))
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)
