"""The steps of ``benchmarks/gpu_check.sh``: photos, prepare, the training matrix, one table.

    python benchmarks/gpu_check.py [--cpu] [--work .bench/gpu_check] [--table FILE]
                                   [--backends jax,torch] [--budget 390]

For each Keras backend (JAX and PyTorch: what GPU machines ship without TensorFlow), the
classic article's model (300 px) and the default recipe (128 px) are trained for a few epochs
on generated photos plus the built-in sample, on the GPU with mixed precision and without,
and on the CPU. Each training runs in its own process (``--worker``), which reports the peak
GPU memory its backend allocated. The table gives training photos/s and seconds per epoch
(the fastest epoch after the first, which compiles; validation included), and peak GPU
memory. The check fails (exit 1) when a training fails or when a GPU run's log does not say
"Training on GPU". ``--cpu`` runs the same steps with tiny settings on the CPU, so the
script is tested where there is no GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ["--blocks", "1", "--filters", "10", "--kernel-size", "5", "--dense", "0",
           "--no-augment", "--dropout", "0"]


@dataclass
class Settings:
    photos: int          # generated photos per class (the built-in sample is added)
    cpu_photos: int      # per class, for the CPU runs: a subset, to keep them short
    epochs: int
    batch_size: int
    recipes: dict[str, tuple[int, list[str]]] = field(default_factory=dict)


GPU = Settings(photos=1000, cpu_photos=150, epochs=3, batch_size=32, recipes={
    "article": (300, ARTICLE), "default": (128, [])})
CPU = Settings(photos=12, cpu_photos=12, epochs=2, batch_size=8, recipes={
    "article": (24, ARTICLE), "default": (32, ["--blocks", "2", "--filters", "4"])})


@dataclass
class Run:
    backend: str
    recipe: str
    device: str      # "gpu", "cpu" (--device cpu, GPU hidden) or "auto" (--cpu mode)
    precision: str   # "mixed" or "float32"
    status: str = "not run"
    photos_per_second: float | None = None
    seconds_per_epoch: float | None = None
    peak_memory_mb: float | None = None
    said: str = ""   # the log's "Training on ..." line


def gpu_name_and_driver() -> tuple[str, str]:
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True)
        rows = [row.split(", ") for row in done.stdout.strip().splitlines() if ", " in row]
        if done.returncode == 0 and rows:
            names = sorted({row[0] for row in rows})
            return f"{len(rows)} x {', '.join(names)}", rows[0][1]
    from catsdogs.backend import nvidia_driver

    return "none found", nvidia_driver() or "no NVIDIA driver"


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` photos per class: warm bright 'cats', cold dark 'dogs', with noise and a
    random disc, so that a few epochs learn something and JPEG decoding has real work."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    for kind, base in (("cats", (60, 90, 210)), ("dogs", (150, 60, 30))):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
            image = np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)
            centre = (int(rng.integers(0, size[0])), int(rng.integers(0, size[1])))
            cv2.circle(image, centre, int(rng.integers(5, size[1] // 3)),
                       tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
            ok, encoded = cv2.imencode(".jpg", image)
            if not ok:
                raise ValueError("OpenCV could not encode a generated photo")
            (folder / kind / f"generated_{index}.jpg").write_bytes(encoded.tobytes())


def make_photos(work: Path, settings: Settings, cpu_mode: bool) -> dict[str, Path]:
    """Photo folders: ``all`` (generated + the built-in sample) and ``cpu`` (a subset)."""
    folders = {"all": work / "photos", "cpu": work / "photos_cpu"}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    size = (64, 48) if cpu_mode else (400, 300)
    write_photos(folders["all"], settings.photos, size)
    write_photos(folders["cpu"], settings.cpu_photos, size)
    if not cpu_mode:
        sample = ROOT / "catsdogs" / "sample_data"
        for kind in ("cats", "dogs"):
            for photo in sorted((sample / kind).glob("*.jpg")):
                shutil.copy(photo, folders["all"] / kind / photo.name)
    return folders


def catsdogs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "catsdogs", *args], capture_output=True,
                          text=True, env=env)


def prepare(photos: Path, out: Path, size: int) -> None:
    done = catsdogs("prepare", str(photos), "--out", str(out), "--size", str(size), "--force")
    if done.returncode != 0:
        raise SystemExit(f"prepare failed:\n{done.stdout}{done.stderr}")


def worker(arguments: list[str]) -> None:
    """One training in this process, then the peak GPU memory the backend allocated, as JSON
    into the file named by the first argument."""
    result_path, train_args = Path(arguments[0]), arguments[1:]
    from catsdogs.cli import cli

    code = 0
    try:
        cli.main(args=train_args, prog_name="catsdogs", standalone_mode=False)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception as error:  # report it in the table, not as a traceback only
        print(f"Error: {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    result_path.write_text(json.dumps({"exit_code": code, "peak_bytes": peak_gpu_bytes()}))
    sys.stdout.flush()
    os._exit(code)  # no slow interpreter teardown of the backend's threads


def peak_gpu_bytes() -> int | None:
    backend = os.environ.get("KERAS_BACKEND", "")
    try:
        if backend == "jax":
            import jax

            stats = [d.memory_stats() or {} for d in jax.local_devices() if d.platform == "gpu"]
            return max((s.get("peak_bytes_in_use", 0) for s in stats), default=None)
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    except Exception:  # a statistic the backend does not offer: the table says "-"
        return None
    return None


def train_once(run: Run, data: Path, settings: Settings, work: Path, timeout: float) -> None:
    size, recipe_args = settings.recipes[run.recipe]
    name = f"{run.backend}_{run.recipe}_{run.device}_{run.precision}"
    out, result = work / "models" / name, work / "models" / f"{name}.json"
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result.parent.mkdir(parents=True, exist_ok=True)
    args = ["train", "--data", str(data), "--out", str(out), "--force", *recipe_args,
            "--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
            "--precision", run.precision]
    if run.device == "cpu":
        args += ["--device", "cpu"]
    env = {**os.environ, "KERAS_BACKEND": run.backend, "PYTHONUNBUFFERED": "1"}
    if run.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # keeps JAX and torch from touching the GPU at all
    result.unlink(missing_ok=True)
    try:
        with open(log, "w") as handle:
            done = subprocess.run([sys.executable, __file__, "--worker", str(result), *args],
                                  stdout=handle, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        run.status = f"timed out after {timeout:.0f} s"
        return
    text = log.read_text(errors="replace")
    run.said = next((line for line in text.splitlines() if line.startswith("Training on")), "")
    if done.returncode != 0 or not (out / "history.csv").is_file():
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        run.status = f"failed ({done.returncode}): {last[0][:80]}"
        return
    read_figures(run, out, result)


def read_figures(run: Run, out: Path, result: Path) -> None:
    with open(out / "history.csv", newline="") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    steady = min(seconds[1:] or seconds)
    info = json.loads((out / "model.json").read_text())
    run.seconds_per_epoch = steady
    run.photos_per_second = info["num_train"] / steady if steady > 0 else None
    peak = json.loads(result.read_text()).get("peak_bytes") if result.is_file() else None
    run.peak_memory_mb = peak / 2**20 if peak else None
    run.status = "ok"


def plan(backends: list[str], settings: Settings, cpu_mode: bool) -> list[Run]:
    """GPU runs first (they are the point of the check), the CPU ones after."""
    runs = []
    devices = ["auto"] if cpu_mode else ["gpu", "cpu"]
    for device in devices:
        for backend in backends:
            for recipe in settings.recipes:
                precisions = ["float32"] if device == "cpu" else ["mixed", "float32"]
                runs += [Run(backend, recipe, device, p) for p in precisions]
    return runs


def table(runs: list[Run], gpu: str, driver: str, cpu_mode: bool, settings: Settings) -> str:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [
        f"GPU: {gpu}; driver {driver}. Mode: {'--cpu (tiny settings)' if cpu_mode else 'GPU'}.",
        f"Python {platform.python_version()}; {settings.epochs} epochs of "
        f"{2 * settings.photos} generated photos (+ the built-in sample on the GPU check), "
        f"batch {settings.batch_size}; CPU runs on {2 * settings.cpu_photos} photos.",
        "Photos/s and s/epoch: the fastest epoch after the first (validation included).",
        "",
        "| backend | model | device | precision | training photos/s | s/epoch "
        "| peak GPU MB | result |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.backend} | {run.recipe} | {run.device} | {run.precision} "
            f"| {number(run.photos_per_second, 0)} | {number(run.seconds_per_epoch, 2)} "
            f"| {number(run.peak_memory_mb, 0)} | {run.status}"
            f"{'; ' + run.said if run.said else ''} |")
    return "\n".join(lines) + "\n"


def versions(backends: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ["keras", *backends]:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def failures(runs: list[Run], cpu_mode: bool) -> list[str]:
    wrong = []
    for run in runs:
        label = f"{run.backend} {run.recipe} {run.device} {run.precision}"
        if run.status.startswith(("failed", "timed out")):
            wrong.append(f"{label}: {run.status}")
        elif run.status == "ok" and run.device == "gpu" and "Training on GPU" not in run.said:
            wrong.append(f"{label}: the log does not say \"Training on GPU\" ({run.said!r})")
    if not cpu_mode and not any(run.status == "ok" and run.device == "gpu" for run in runs):
        wrong.append("no GPU run finished")
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny settings, no GPU needed")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "gpu_check")
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--budget", type=float, default=390.0,
                        help="seconds from the start; trainings that no longer fit are skipped")
    options = parser.parse_args()
    started = time.monotonic()
    settings = CPU if options.cpu else GPU
    backends = [name for name in options.backends.split(",") if find_spec(name)]
    if not backends:
        print(f"None of {options.backends} is installed.", file=sys.stderr)
        return 1
    work = options.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    table_path = options.table or work / "table.md"
    folders = make_photos(work, settings, options.cpu)
    data: dict[tuple[str, str], Path] = {}
    for recipe, (size, _) in settings.recipes.items():
        for subset in ("all", "cpu"):
            data[(recipe, subset)] = work / f"prepared_{recipe}_{subset}"
            prepare(folders[subset], data[(recipe, subset)], size)
    print(f"Photos and datasets ready in {time.monotonic() - started:.0f} s "
          f"({versions(backends)}).", flush=True)
    runs = plan(backends, settings, options.cpu)
    for run in runs:
        left = options.budget - (time.monotonic() - started)
        if left < 20:
            run.status = "skipped: time budget spent"
            continue
        subset = "all" if run.device == "gpu" or options.cpu else "cpu"
        train_once(run, data[(run.recipe, subset)], settings, work, timeout=min(180, left))
        print(f"{run.backend:5} {run.recipe:7} {run.device} {run.precision:7} {run.status}"
              f"  {run.said}", flush=True)
    gpu, driver = gpu_name_and_driver()
    text = table(runs, gpu, driver, options.cpu, settings)
    text += f"\n{versions(backends)}; {time.monotonic() - started:.0f} s in all.\n"
    table_path.write_text(text)
    print("\n" + text + f"\nWritten to {table_path}")
    wrong = failures(runs, options.cpu)
    for line in wrong:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    sys.exit(main())
