"""Every Keras backend: the GPU hint, the ONNX export without its exporter, and an end-to-end
smoke test on JAX and PyTorch without TensorFlow.

The smoke tests run where their backend is installed (``.ci/run`` builds a second virtual
environment with JAX and PyTorch on the CPU and no TensorFlow) and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from catsdogs import backend, export, info
from catsdogs.cli import cli

ROOT = Path(__file__).resolve().parent.parent

TF_BUILD = {"version": "2.21.0", "cuda": "12.5.1", "cudnn": "9"}


def test_no_hint_without_an_nvidia_driver_or_with_a_gpu():
    assert backend.gpu_hint("tensorflow", [], None, TF_BUILD) is None
    assert backend.gpu_hint("tensorflow", ["NVIDIA H200"], "550.54.15", TF_BUILD) is None


def test_hint_names_the_cuda_libraries_tensorflow_needs_and_the_fix():
    hint = backend.gpu_hint("tensorflow", [], "550.54.15", TF_BUILD)
    assert hint == (
        "An NVIDIA driver (550.54.15) is here but TensorFlow 2.21.0 finds no usable GPU: it "
        "needs the CUDA 12.5.1 and cuDNN 9 libraries and a driver recent enough for them. "
        'Fix: pip install "catsdogs[gpu]" (tensorflow[and-cuda] brings the right ones).'
    )
    assert "\n" not in hint


@pytest.mark.parametrize(("name", "build", "fix"), [
    ("tensorflow", {"version": "2.21.0", "cuda": None}, 'pip install "catsdogs[gpu]"'),
    ("jax", {"version": "0.10.2", "cuda": None}, 'pip install "jax[cuda12]"'),
    ("jax", {"version": "0.10.2", "cuda": "12"}, "update the NVIDIA driver"),
    ("torch", {"version": "2.13.0+cpu", "cuda": None}, "install a CUDA build of torch"),
    ("torch", {"version": "2.13.0", "cuda": "12.8"}, "too old for CUDA 12.8"),
])
def test_every_backend_gets_a_one_line_fix(name, build, fix):
    hint = backend.gpu_hint(name, [], "535.104.05", build)
    assert hint is not None and fix in hint and "\n" not in hint
    assert hint.startswith("An NVIDIA driver (535.104.05) is here but")


def test_driver_version_is_read_from_proc(monkeypatch, tmp_path):
    version_file = tmp_path / "version"
    version_file.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                            "550.54.15  Release Build  (dvs-builder@U16-I3-B03-4-3)\n")
    monkeypatch.setattr(backend, "NVIDIA_VERSION_FILE", version_file)
    assert backend.nvidia_driver() == "550.54.15"
    monkeypatch.setattr(backend, "NVIDIA_VERSION_FILE", tmp_path / "missing")
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    assert backend.nvidia_driver() is None
    monkeypatch.setattr(backend.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert backend.nvidia_driver() == "version unknown"


def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    flags = "fpu vme avx2 avx512f avx512_vnni"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC avx512_bf16\nflags\t\t: {flags}\n"
                       f"\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert not backend.cpu_has_bfloat16(cpuinfo)  # the name does not count, only the flags
    for flag in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags} {flag} avx512_fp16\n")
        assert backend.cpu_has_bfloat16(cpuinfo)
    assert not backend.cpu_has_bfloat16(tmp_path / "missing")  # macOS, Windows


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert not backend.cpu_has_amx(cpuinfo)  # AVX512_BF16 and AMX tiles without bfloat16
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n")
    assert backend.cpu_has_amx(cpuinfo)
    assert not backend.cpu_has_amx(tmp_path / "missing")


def fake_driver_without_gpu(monkeypatch):
    monkeypatch.setattr(backend, "nvidia_driver", lambda: "550.54.15")
    monkeypatch.setattr(backend, "devices", lambda: [])
    monkeypatch.setattr(backend, "backend_build", lambda: TF_BUILD)


def test_info_and_train_say_why_the_gpu_is_not_used(monkeypatch, runner):
    fake_driver_without_gpu(monkeypatch)
    result = runner.invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    warning = json.loads(result.stdout)["gpu_warning"]
    assert warning.startswith("An NVIDIA driver (550.54.15) is here but") and "Fix: " in warning
    lines = runner.invoke(cli, ["info"]).stdout.splitlines()
    assert [line for line in lines if line.startswith("gpu_warning:")][0].endswith(warning)
    assert backend.training_hint("CPU") == warning
    assert backend.training_hint("CPU (--device cpu)") is None  # the user's choice
    assert backend.training_hint("GPU (NVIDIA H200)") is None


def test_no_gpu_warning_on_a_machine_without_nvidia_driver(monkeypatch, runner):
    monkeypatch.setattr(backend, "nvidia_driver", lambda: None)
    facts = json.loads(runner.invoke(cli, ["info", "--json"]).stdout)
    assert "gpu_warning" not in facts
    assert backend.training_hint("CPU") is None


@pytest.mark.slow  # trains a model
def test_train_prints_the_hint_once(monkeypatch, runner, prepared, tmp_path):
    from tests.conftest import TINY_MODEL

    fake_driver_without_gpu(monkeypatch)
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out",
                                 str(tmp_path / "model"), *TINY_MODEL, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "Training on CPU." in result.stdout
    assert result.stderr.count("An NVIDIA driver (550.54.15) is here but") == 1


def test_export_without_its_exporter_leaves_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(export.EXPORTERS, backend.keras().backend.backend(), "no_such_exporter")
    note = export.missing_exporter()
    assert note is not None and note.startswith("ONNX export skipped:")
    assert "pip install no_such_exporter" in note and note.endswith("predict uses model.keras")
    (tmp_path / "model.json").write_text(json.dumps({"onnx": {"file": None, "note": note}}))
    assert export.skipped_note(tmp_path) == note
    (tmp_path / "model.json").write_text(json.dumps({"onnx": {"file": "model.onnx"}}))
    assert export.skipped_note(tmp_path) is None
    assert info.onnx_exporter("numpy") == "none on the numpy backend"


SMOKE = r"""
import json, sys
from pathlib import Path
from click.testing import CliRunner
from tests.conftest import write_photos
from catsdogs.cli import cli

root = Path(sys.argv[1])
write_photos(root / "photos" / "cats", "cat", 12, seed=1)
write_photos(root / "photos" / "dogs", "dog", 12, seed=2)
runner = CliRunner()
steps = [
    ["prepare", str(root / "photos"), "--out", str(root / "prepared"), "--size", "24"],
    ["train", "--data", str(root / "prepared"), "--out", str(root / "model"), "--blocks", "1",
     "--filters", "4", "--dense", "0", "--epochs", "2", "--batch-size", "4"],
    ["predict", str(root / "photos" / "cats" / "cat_0.jpg"), "--model", str(root / "model")],
    ["evaluate", str(root / "photos"), "--model", str(root / "model"), "--out",
     str(root / "evaluation")],
]
results = []
for step in steps:
    result = runner.invoke(cli, step)
    results.append({"step": step[0], "exit_code": result.exit_code, "output": result.output,
                    "exception": repr(result.exception)})
    if result.exit_code != 0:
        break
print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules,
                  "backend": __import__("keras").backend.backend()}))
"""


def backend_missing(name: str) -> bool:
    return find_spec(name) is None or find_spec("keras") is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jax", "torch"])
def test_prepare_train_predict_evaluate_without_tensorflow(name, tmp_path):
    if backend_missing(name):
        pytest.skip(f"{name} is not installed (.ci/run tests it in its own environment)")
    env = {**os.environ, "KERAS_BACKEND": name, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SMOKE, str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for step in report["results"]:
        assert step["exit_code"] == 0, f"{step['step']}: {step['output']}{step['exception']}"
    assert [step["step"] for step in report["results"]] == [
        "prepare", "train", "predict", "evaluate"]
    assert report["backend"] == name
    assert report["tensorflow"] is False, "tensorflow was imported"
    train_output = report["results"][1]["output"]
    assert "Training on CPU." in train_output
    model_json = json.loads((tmp_path / "model" / "model.json").read_text())
    if model_json["onnx"]["file"] is None:  # no exporter here: one line says so
        assert model_json["onnx"]["note"].startswith("ONNX export skipped")
        assert "predict uses model.keras" in train_output
    predicted = report["results"][2]["output"]
    assert predicted.startswith(str(tmp_path / "photos" / "cats" / "cat_0.jpg") + ": ")
    assert (tmp_path / "evaluation" / "metrics.json").is_file()


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs(tmp_path):
    """The script's --cpu mode on one backend: torch where it is installed (its tiny trainings
    take a second where JAX's take several), else JAX; the smoke tests above cover both."""
    name = next((name for name in ("torch", "jax") if not backend_missing(name)), None)
    if name is None:
        pytest.skip("neither torch nor jax is installed (.ci/run tests it in its environment)")
    table = tmp_path / "table.md"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu",
                           "--backends", name, "--work", str(tmp_path / "work"), "--table",
                           str(table)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    text = table.read_text()
    assert "| backend | model | device | precision | training photos/s |" in text
    rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 4
    for row in rows:  # the log names a reduced precision: "Training on CPU, in mixed float16."
        precision = row.split("|")[4].strip()
        said = {"mixed": "Training on CPU, in mixed float16.", "float32": "Training on CPU."}
        assert f"| ok; {said[precision]} |" in row, row


def test_device_cpu_hides_the_gpus_before_the_backend_loads():
    # torch creates its variables on a GPU whenever one exists, whatever the device scope:
    # `train --device cpu` hides the GPUs from the backend before it is imported.
    code = ("import os, sys\n"
            "from catsdogs.backend import hide_gpus\n"
            "print(hide_gpus(), os.environ['CUDA_VISIBLE_DEVICES'], os.environ['JAX_PLATFORMS'])\n"
            "sys.modules['keras'] = sys\n"
            "env = {}\n"
            "print(hide_gpus(env), env)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    assert done.stdout.splitlines() == ["True -1 cpu", "False {}"]
