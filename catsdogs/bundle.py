"""The model folder: ``model.keras`` + ``model.json`` (+ ``history.csv``), read and checked.

``model.json`` says everything prediction needs besides the weights: the class names, the
image size and resize policy the model was trained on, and how it was built and trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "catsdogs-model/1"


@dataclass
class ModelInfo:
    """The checked contents of ``model.json``."""

    path: Path
    classes: list[str]
    image_size: int
    resize_policy: str
    raw: dict[str, Any]

    @property
    def keras_path(self) -> Path:
        return self.path / "model.keras"


def is_model_folder(path: Path) -> bool:
    return (path / "model.json").is_file()


def read_model_info(folder: str | Path) -> ModelInfo:
    """Read and validate ``folder/model.json``; ValueError/FileNotFoundError on any problem."""
    from data_prep.images import MIN_SIDE, RESIZE_POLICIES

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no model folder at {root}: run 'catsdogs train' first")
    meta = root / "model.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{root} holds no model.json: not a catsdogs model folder")
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {meta}: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{meta} must hold a JSON object")
    classes = raw.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(name, str) and name for name in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"{meta}: 'classes' must be a list of two or more distinct names")
    size = raw.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIDE:
        raise ValueError(f"{meta}: 'image_size' must be a whole number >= {MIN_SIDE}")
    policy = raw.get("resize_policy", "stretch")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"{meta}: 'resize_policy' must be one of {RESIZE_POLICIES}")
    return ModelInfo(root, list(classes), size, policy, raw)


def load_keras_model(info: ModelInfo):
    """Load ``model.keras`` in Keras' safe mode (no Lambda code, nothing unpickled) and check
    that its input and output agree with ``model.json``."""
    from catsdogs.backend import keras as import_keras

    keras = import_keras()
    if not info.keras_path.is_file():
        raise FileNotFoundError(f"{info.path} holds no model.keras")
    try:
        model = keras.saving.load_model(info.keras_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad or unsafe file
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "lambda" in message.lower() or "safe_mode" in message:
            message = "it contains a Lambda layer (arbitrary code), refused in safe mode"
        raise ValueError(f"cannot load {info.keras_path}: {message}") from None
    expected = (info.image_size, info.image_size, 3)
    shape = tuple(model.input_shape[1:])
    if shape != expected:
        raise ValueError(
            f"{info.path}/model.json says {info.image_size}px images but the model "
            f"expects input {shape}"
        )
    outputs = model.output_shape[-1]
    if outputs != (1 if len(info.classes) == 2 else len(info.classes)):
        raise ValueError(
            f"{info.path}: model has {outputs} outputs for {len(info.classes)} classes"
        )
    return model
