"""``model.onnx`` beside ``model.keras``: written at the end of training, read by ``predict``.

Predicting with onnxruntime needs neither TensorFlow nor Keras, so a single
``catsdogs predict photo.jpg`` starts in a fraction of the time ``import keras`` takes. The
export is checked before it is kept: the ONNX graph must give the Keras model's probabilities
to within :data:`TOLERANCE` on a few probe images, or it is thrown away and prediction falls
back to ``model.keras``. Nothing here is required: when the export cannot be made (a backend
or a package that does not support it) training still succeeds and ``model.json`` says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ONNX_NAME = "model.onnx"
EXPORTERS = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "onnx"}
"""The package Keras writes ONNX with, for each backend (``torch.onnx`` needs ``onnx``)."""
TOLERANCE = 1e-4
"""The most an ONNX probability may differ from the Keras one, on any image, for any class."""


def probe_images(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> np.ndarray:
    """Images to compare the two models on: black, white and random 0..255 pixels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, *shape)).astype("float32")
    images[0] = 0.0
    if count > 1:
        images[1] = 255.0
    return images


def export_onnx(model: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX and check it against the Keras model.

    Returns what to record under ``"onnx"`` in ``model.json``: ``{"file": "model.onnx",
    "max_difference": ...}`` when the file was written and agrees, or ``{"file": None,
    "note": why}`` when there is none. Never raises for a failed export: the Keras model
    remains the reference and ``predict`` falls back to it.
    """
    from catsdogs.backend import quiet_native_stderr

    missing = missing_exporter()
    if missing is not None:
        return {"file": None, "note": missing}
    target = Path(path)
    shape = tuple(int(side) for side in model.input_shape[1:])
    probes = probe_images(shape)
    try:
        expected = np.asarray(model.predict(probes, verbose=0), dtype="float64")
        # tf2onnx logs to stdout/stderr while converting; keep the training log clean.
        with (quiet_native_stderr(), contextlib.redirect_stdout(io.StringIO()),
              warnings.catch_warnings()):
            warnings.simplefilter("ignore")  # tf2onnx's deprecation notices, not ours
            model.export(str(target), format="onnx", verbose=False)
        session = open_session(target)
        got = np.asarray(run_session(session, probes), dtype="float64")
    except Exception as error:  # many packages, many failure types: all mean "no ONNX"
        target.unlink(missing_ok=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {"file": None, "note": f"ONNX export skipped: {type(error).__name__}: {reason}"}
    difference = float(np.max(np.abs(got.reshape(expected.shape) - expected)))
    if not difference <= TOLERANCE:
        target.unlink(missing_ok=True)
        return {
            "file": None,
            "note": f"ONNX export discarded: it differs from the Keras model by {difference:.2e}",
        }
    return {"file": target.name, "max_difference": difference}


def missing_exporter() -> str | None:
    """Why ONNX cannot be written on this Keras backend, checked without importing anything
    (so a JAX or PyTorch run never loads TensorFlow); None when the exporter is installed."""
    from importlib.util import find_spec

    from catsdogs.backend import keras

    backend = str(keras().backend.backend())
    package = EXPORTERS.get(backend)
    if package is None:
        return f"ONNX export skipped: the {backend} backend cannot export ONNX"
    if find_spec(package.replace("-", "_")) is None:
        return (f"ONNX export skipped: the {backend} backend needs {package} "
                f"(pip install {package}); predict uses model.keras")
    return None


def skipped_note(folder: str | os.PathLike[str]) -> str | None:
    """The note ``model.json`` keeps when training wrote no ``model.onnx`` (for the log), or
    None when the export was written or the folder says nothing about it."""
    import json

    try:
        recorded = json.loads((Path(folder) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    onnx = recorded.get("onnx") if isinstance(recorded, dict) else None
    if not isinstance(onnx, dict) or onnx.get("file") or not onnx.get("note"):
        return None
    note = str(onnx["note"])
    return note if "model.keras" in note else f"{note}; predict uses model.keras"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(folder: str | os.PathLike[str]) -> dict[str, str]:
    """What ``model.json`` records under ``"onnx"`` to tie ``model.onnx`` to the
    ``model.keras`` it was exported from."""
    root = Path(folder)
    return {"sha256": file_sha256(root / ONNX_NAME),
            "keras_sha256": file_sha256(root / "model.keras")}


def onnx_mismatch(folder: str | os.PathLike[str], recorded: Any) -> str | None:
    """Why ``folder/model.onnx`` is not the export of ``folder/model.keras`` that training
    recorded, or None when it is (or when the folder, from an older catsdogs, records
    nothing to compare)."""
    if not isinstance(recorded, dict) or not {"sha256", "keras_sha256"} <= recorded.keys():
        return None
    try:
        now = fingerprints(folder)
    except OSError as error:
        return f"cannot be checked ({error.strerror or error})"
    if now["keras_sha256"] != recorded["keras_sha256"]:
        return "was exported from a different model.keras (model.keras changed after training)"
    if now["sha256"] != recorded["sha256"]:
        return "changed after training"
    return None


def onnxruntime_available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def import_onnxruntime() -> Any:
    """``onnxruntime``, with its usage telemetry off: recent releases otherwise write a
    session file (``.ses``) into the user's temporary folder on every run."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def open_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime session on the CPU (or the GPU when onnxruntime-gpu can use one)."""
    onnxruntime = import_onnxruntime()

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    available = onnxruntime.get_available_providers()
    providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if name in available]
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"cannot load {path}: {message}") from None


def run_session(session: Any, images: np.ndarray) -> np.ndarray:
    """The model's raw output for a float32 batch of 0..255 pixels."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, dtype="float32")})[0]


class OnnxModel:
    """``model.onnx`` loaded with onnxruntime, checked against ``model.json``."""

    def __init__(self, path: str | os.PathLike[str], image_size: int, num_classes: int,
                 channels: int = 3) -> None:
        self.path = Path(path)
        self.session = open_session(self.path)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output")
        shape = tuple(inputs[0].shape[1:])
        if shape != (image_size, image_size, channels):
            colour = "RGB" if channels == 3 else "gray"
            raise ValueError(
                f"{self.path} expects input {shape} but model.json says "
                f"{image_size}x{image_size} {colour} images"
            )
        width = outputs[0].shape[-1]
        if width != (1 if num_classes == 2 else num_classes):
            raise ValueError(f"{self.path}: {width} outputs for {num_classes} classes")

    def predict(self, images: np.ndarray) -> np.ndarray:
        return run_session(self.session, images)
