"""The one place Keras is imported from, lazily, with the backend's start-up noise turned down."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Capture what native code writes to file descriptor 2; replay it only on an exception.

    TensorFlow writes C++ log lines (oneDNN notices, "failed call to cuInit" on machines
    without a GPU) while it loads and probes devices; no environment variable silences them in
    recent releases.
    """
    from data_prep.safeio import native_stderr_to

    with tempfile.TemporaryFile() as captured:
        try:
            with native_stderr_to(captured.fileno()):
                yield
        except BaseException:
            if sys.stderr is not None:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
            raise


def keras() -> ModuleType:
    """Import and return ``keras`` (TensorFlow backend unless ``KERAS_BACKEND`` says otherwise)."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        import keras as keras_module

        if keras_module.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes CUDA now, while stderr is captured
    return keras_module


def devices() -> list[str]:
    """Human names of the accelerators the Keras backend can use; empty when only the CPU."""
    backend = keras().backend.backend()
    with quiet_native_stderr():
        if backend == "tensorflow":
            import tensorflow as tf

            return [
                tf.config.experimental.get_device_details(device).get("device_name", device.name)
                for device in tf.config.list_physical_devices("GPU")
            ]
        if backend == "jax":
            import jax

            return [str(d.device_kind) for d in jax.devices() if d.platform != "cpu"]
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def describe_device() -> str:
    """``"GPU (NVIDIA H100)"`` or ``"CPU"``, for the training log and ``catsdogs info``."""
    names = devices()
    return f"GPU ({', '.join(names)})" if names else "CPU"
