"""The model folder format: ``model.keras`` + ``model.onnx`` + ``model.json`` + ``history.csv``
+ ``curves.png``, written (:func:`write_model_folder`), read and checked.

``model.json`` says everything prediction needs besides the weights: the class names, the
image size and resize policy the model was trained on, and how it was built and trained.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep import safeio

FORMAT = "catsdogs-model/1"
MAX_IMAGE_SIZE = 4096
MAX_JSON_BYTES = 16 << 20  # model.json and the archive's config.json: far above any real one
# Objects in a .keras config that carry or reach arbitrary code: Python lambdas (bytecode),
# plain functions looked up by name (e.g. keras.models.load_model, the CVE-2025-9906 trick),
# and layers that load other saved programs.
UNSAFE_CLASS_NAMES = {"Lambda", "__lambda__", "function", "TFSMLayer", "TFOpLambda"}
# Top-level packages a config may name: Keras, and catsdogs' own registered layers (if any).
TRUSTED_MODULES = {"keras", "catsdogs"}


@dataclass
class ModelInfo:
    """The checked contents of ``model.json``."""

    path: Path
    classes: list[str]
    image_size: int
    resize_policy: str
    raw: dict[str, Any]
    channels: int = 3  # 1 for a model of gray images

    @property
    def keras_path(self) -> Path:
        return self.path / "model.keras"


def is_model_folder(path: Path) -> bool:
    return (path / "model.json").is_file()


def read_model_info(folder: str | Path) -> ModelInfo:
    """Read and validate ``folder/model.json``; ValueError/FileNotFoundError on any problem."""
    from data_prep.images import CHANNELS, MIN_SIDE, RESIZE_POLICIES

    root = Path(folder)
    if not root.is_dir():
        safeio.restore_interrupted(root)  # a train killed mid-publish left it aside
    if not root.is_dir():
        raise FileNotFoundError(f"no model folder at {root}: run 'catsdogs train' first")
    meta = root / "model.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{root} holds no model.json: not a catsdogs model folder")
    try:
        if meta.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MB")
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ValueError(f"cannot read {meta}: {reason}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{meta} must hold a JSON object")
    if raw.get("format") != FORMAT:
        raise ValueError(f"{meta}: 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    classes = raw.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(name, str) and name for name in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"{meta}: 'classes' must be a list of two or more distinct names")
    size = raw.get("image_size")
    if (not isinstance(size, int) or isinstance(size, bool)
            or not MIN_SIDE <= size <= MAX_IMAGE_SIZE):
        raise ValueError(
            f"{meta}: 'image_size' must be a whole number from {MIN_SIDE} to {MAX_IMAGE_SIZE}"
        )
    policy = raw.get("resize_policy", "stretch")
    if not isinstance(policy, str) or policy not in RESIZE_POLICIES:
        raise ValueError(f"{meta}: 'resize_policy' must be one of {RESIZE_POLICIES}")
    channels = raw.get("channels", 3)  # absent from models made before gray ones
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise ValueError(f"{meta}: 'channels' must be 1 (gray) or 3 (RGB)")
    return ModelInfo(root, list(classes), size, policy, raw, int(channels))


def unsafe_objects(config: Any) -> str | None:
    """The first object of a .keras ``config.json`` that could run code, described; or None.

    Checked before Keras sees the file, on top of Keras' own safe mode: a Lambda layer or a
    function reference anywhere, or a ``module`` outside Keras (and catsdogs).
    """
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            name = item.get("class_name")
            if isinstance(name, str) and name in UNSAFE_CLASS_NAMES:
                kind = "a Lambda layer" if "ambda" in name else f"a {name!r} object"
                return f"it contains {kind} (arbitrary code), refused in safe mode"
            module = item.get("module")
            if module is not None and (
                not isinstance(module, str) or module.split(".")[0] not in TRUSTED_MODULES
            ):
                return f"it refers to code outside Keras (module {module!r}), refused"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_keras_archive(path: Path) -> None:
    """Refuse a ``model.keras`` that is not a Keras archive or that carries code."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.getinfo("config.json")
            if member.file_size > MAX_JSON_BYTES:
                raise ValueError(f"config.json larger than {MAX_JSON_BYTES >> 20} MB")
            with archive.open(member) as handle:
                config = json.loads(handle.read(MAX_JSON_BYTES + 1))
    except KeyError:
        raise ValueError(f"cannot load {path}: not a Keras archive (no config.json)") from None
    except RecursionError:
        raise ValueError(f"cannot load {path}: config.json is nested too deeply") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise ValueError(f"cannot load {path}: not a Keras archive ({first})") from None
    problem = unsafe_objects(config)
    if problem is not None:
        raise ValueError(f"cannot load {path}: {problem}")


def load_keras_model(info: ModelInfo):
    """Load ``model.keras`` in Keras' safe mode (no Lambda code, nothing unpickled) and check
    that its input and output agree with ``model.json``."""
    from catsdogs.backend import keras as import_keras

    keras = import_keras()
    if not info.keras_path.is_file():
        raise FileNotFoundError(f"{info.path} holds no model.keras")
    check_keras_archive(info.keras_path)
    try:
        model = keras.saving.load_model(info.keras_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad or unsafe file
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "lambda" in message.lower() or "safe_mode" in message:
            message = "it contains a Lambda layer (arbitrary code), refused in safe mode"
        raise ValueError(f"cannot load {info.keras_path}: {message}") from None
    expected = (info.image_size, info.image_size, info.channels)
    try:
        shape = tuple(model.input_shape[1:])
        outputs = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError, IndexError):
        raise ValueError(f"cannot load {info.keras_path}: the model has no single "
                         "image input and output") from None
    if shape != expected:
        raise ValueError(
            f"{info.path}/model.json says {info.image_size}px "
            f"{'gray ' if info.channels == 1 else ''}images but the model "
            f"expects input {shape}"
        )
    if outputs != (1 if len(info.classes) == 2 else len(info.classes)):
        raise ValueError(
            f"{info.path}: model has {outputs} outputs for {len(info.classes)} classes"
        )
    return model


def write_model_folder(folder: Path, model: Any, info: dict[str, Any],
                       history: list[dict[str, Any]]) -> None:
    """Write a complete model folder into ``folder`` (the hidden folder being built):
    ``model.keras``, ``model.onnx`` when the export works, ``model.json`` (``info`` plus the
    format and the export's note), ``history.csv`` and ``curves.png``."""
    import pandas as pd

    from catsdogs.export import export_onnx, fingerprints
    from catsdogs.plots import curves_png

    model.save(folder / "model.keras")
    # The same model as ONNX, for fast Keras-free predict; a note when it fails.
    onnx = export_onnx(model, folder / "model.onnx")
    if onnx.get("file"):  # tie model.onnx to this model.keras: predict checks both
        onnx.update(fingerprints(folder))
    safeio.write_json_atomic(folder / "model.json", {"format": FORMAT, **info, "onnx": onnx})
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    curves_png(history, folder / "curves.png")
