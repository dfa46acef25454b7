"""The one place Keras is imported from, lazily, with the backend's start-up noise turned down."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")
CPUINFO_FILE = Path("/proc/cpuinfo")
GPU_INSTALL = 'pip install "catsdogs[gpu]"'


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


def hide_gpus(environ: dict[str, str] | None = None) -> bool:
    """Keep every GPU from the backend that is about to load (``train --device cpu``).

    A device scope alone is not enough for the torch backend, which creates its variables on
    the GPU whenever one exists. Hiding the GPUs before the backend loads works for all three
    backends. False (and nothing done) once Keras is loaded: then only the device scope of
    :func:`catsdogs.train.device_scope` applies.
    """
    environ = os.environ if environ is None else environ
    if "keras" in sys.modules:
        return False
    environ["CUDA_VISIBLE_DEVICES"] = "-1"
    environ["JAX_PLATFORMS"] = "cpu"
    return True


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


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The CPU's feature flags, as Linux's ``/proc/cpuinfo`` (``CPUINFO_FILE``) reports them;
    none where that file is missing (macOS, Windows)."""
    try:
        text = (cpuinfo or CPUINFO_FILE).read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    return flags


def cpu_has_bfloat16(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512_BF16 or AMX)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU has AMX's bfloat16 tile multiplications (Intel Xeon since Sapphire
    Rapids), where bfloat16 gains the most on float32 (1.55× the photos/s, against 1.3×
    with AVX512_BF16 alone: benchmarks/RESULTS.md). ``catsdogs info`` reports it; no
    default depends on it."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version (``"550.54.15"``) when this machine has one, ``"version
    unknown"`` when only ``nvidia-smi`` shows it, or None when there is no NVIDIA driver."""
    try:
        text = NVIDIA_VERSION_FILE.read_text(errors="replace")
    except OSError:
        text = ""
    match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    if match:
        return match.group(1)
    if text or shutil.which("nvidia-smi"):
        return "version unknown"
    return None


def backend_build() -> dict[str, str | None]:
    """What the Keras backend was built for: ``{"version": ..., "cuda": "12.5.1" or None}``
    (``cuda`` None means a CPU-only build; for JAX, the CUDA plugin installed)."""
    from importlib.util import find_spec

    backend = keras().backend.backend()
    with quiet_native_stderr():
        if backend == "tensorflow":
            import tensorflow as tf

            info = tf.sysconfig.get_build_info() if tf.test.is_built_with_cuda() else {}
            return {"version": tf.__version__, "cuda": info.get("cuda_version"),
                    "cudnn": info.get("cudnn_version")}
        if backend == "torch":
            import torch

            return {"version": torch.__version__, "cuda": torch.version.cuda}
        if backend == "jax":
            import jax

            plugins = [cuda for cuda in ("13", "12") if find_spec(f"jax_cuda{cuda}_plugin")]
            return {"version": jax.__version__, "cuda": plugins[0] if plugins else None}
    return {"version": None, "cuda": None}


def gpu_hint(backend: str, found: list[str], driver: str | None,
             build: dict[str, str | None]) -> str | None:
    """One line saying why no GPU is used although an NVIDIA driver is there, and the fix;
    None when a GPU is found or the machine has no NVIDIA driver (nothing to fix)."""
    if found or driver is None or backend == "numpy":
        return None
    seen = f"An NVIDIA driver ({driver}) is here but"
    version, cuda = build.get("version"), build.get("cuda")
    if backend == "tensorflow":
        if not cuda:
            return (f"{seen} this TensorFlow ({version}) was built without CUDA, so training "
                    f"runs on the CPU. Fix: {GPU_INSTALL} (TensorFlow with its CUDA libraries).")
        cudnn = f" and cuDNN {build['cudnn']}" if build.get("cudnn") else ""
        return (f"{seen} TensorFlow {version} finds no usable GPU: it needs the CUDA {cuda}"
                f"{cudnn} libraries and a driver recent enough for them. Fix: {GPU_INSTALL} "
                "(tensorflow[and-cuda] brings the right ones).")
    if backend == "jax":
        if cuda:
            return (f"{seen} JAX {version} with its CUDA {cuda} plugin finds no usable GPU: the "
                    f"driver may be too old for CUDA {cuda}. Fix: update the NVIDIA driver, or "
                    f'pip install "jax[cuda{cuda}]" again to match jax.')
        return (f"{seen} JAX ({version}) finds no GPU: it is a CPU-only install. "
                'Fix: pip install "jax[cuda12]" (or use the TensorFlow backend: '
                f"{GPU_INSTALL}).")
    if backend == "torch":
        if not cuda:
            return (f"{seen} this PyTorch ({version}) is a CPU-only build. Fix: install a "
                    f"CUDA build of torch (or use the TensorFlow backend: {GPU_INSTALL}).")
        return (f"{seen} PyTorch {version} (built for CUDA {cuda}) finds no usable GPU: the "
                f"driver may be too old for CUDA {cuda}. Fix: update the NVIDIA driver, or "
                "install a torch build for an older CUDA.")
    return f"{seen} the {backend} backend finds no GPU."


def gpu_warning() -> str | None:
    """:func:`gpu_hint` for this machine and this Keras backend."""
    driver = nvidia_driver()
    if driver is None:
        return None  # no NVIDIA driver: the CPU is expected, nothing more is imported
    found = devices()
    if found:
        return None
    return gpu_hint(keras().backend.backend(), found, driver, backend_build())


def training_hint(device_name: str) -> str | None:
    """The :func:`gpu_warning` to show when training starts on ``device_name`` (as
    ``on_start`` gets it): only for the CPU chosen by default, not for ``--device cpu``."""
    if not device_name.startswith("CPU") or "--device cpu" in device_name:
        return None
    return gpu_warning()
