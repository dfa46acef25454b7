"""``catsdogs info``: the versions and devices a bug report needs."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from catsdogs import __version__


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def collect() -> dict[str, object]:
    """Versions of catsdogs, Python, Keras and its backend, OpenCV, NumPy, onnxruntime and
    matplotlib, the devices the backend can use, and whether the CPU computes bfloat16
    natively (where ``train --precision bfloat16`` pays). Imports Keras (and so its backend).

    ``gpu_warning`` is there only when an NVIDIA driver is but the backend finds no GPU: one
    line saying why, with the fix (see :func:`catsdogs.backend.gpu_hint`)."""
    import cv2
    import numpy as np

    from catsdogs.backend import cpu_has_amx, cpu_has_bfloat16, devices, gpu_warning
    from catsdogs.backend import keras as import_keras

    keras = import_keras()
    backend = keras.backend.backend()
    backend_package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch",
                       "numpy": "numpy"}.get(backend, backend)
    onnx = package_version("onnxruntime") or package_version("onnxruntime-gpu")
    providers: list[str] = []
    if onnx:
        from catsdogs.export import import_onnxruntime

        providers = list(import_onnxruntime().get_available_providers())
    found = devices()
    facts: dict[str, object] = {
        "catsdogs": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": package_version(backend_package),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "onnxruntime": onnx,
        "onnxruntime_providers": providers,
        "onnx_exporter": onnx_exporter(backend),
        "matplotlib": package_version("matplotlib"),
        "devices": found or ["CPU"],
        # where train --precision bfloat16 is faster than float32 (with TensorFlow)
        "cpu_bfloat16": cpu_has_bfloat16(),
        # where it is fastest: 1.55× float32's photos/s, against 1.3× without AMX
        "cpu_amx": cpu_has_amx(),
        "executable": sys.executable,
    }
    warning = gpu_warning()
    if warning:
        facts["gpu_warning"] = warning
    return facts


def onnx_exporter(backend: str) -> str:
    """``"tf2onnx 1.17.0"``: the package that writes model.onnx on this backend, or what is
    missing (training then saves model.keras alone)."""
    from catsdogs.export import EXPORTERS

    package = EXPORTERS.get(backend)
    if package is None:
        return f"none on the {backend} backend"
    found = package_version(package)
    return f"{package} {found}" if found else f"{package} not installed (no model.onnx)"
