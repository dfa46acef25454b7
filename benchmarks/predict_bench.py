"""Cold start, throughput and memory of ``catsdogs predict``, against plain Keras, in one run.

    python benchmarks/predict_bench.py [--photos DIR] [--repeats 5] [--bulk-repeats 3]
                                       [--model MODEL_DIR]

Without ``--model`` it first builds a model in a temporary folder outside the repository:
``catsdogs prepare`` on the photos (128 px), then ``catsdogs train --epochs 2`` (the default
four-block network), which also writes ``model.onnx``. Then, each in a fresh process, timed
by wall clock, with peak memory from the kernel (``wait4``'s ``ru_maxrss``):

1. cold single photo, repeated and interleaved, median: ``python -c "import keras"``,
   ``catsdogs predict photo.jpg`` (ONNX, six test-time views by default), the same with
   ``--no-tta`` (the photo alone) and with ``--engine keras``, and a plain Keras script (load
   model.keras, cv2 the photo, ``model.predict`` of the photo alone);
2. every photo in the folder (the 2,000 shared photos): the same predictors but ``import
   keras``, repeated and interleaved, median;
3. 1,000 and 10,000 photos (symbolic links to the shared ones) through ``catsdogs predict
   --csv`` and ``--json``: the peak memory should not grow with the number of photos.

Prints a Markdown section for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path("/work/shared/data/catsdogs/train")
BIN = Path(sys.executable).parent

PLAIN_KERAS = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import cv2, numpy as np, keras
model_dir, size, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if len(paths) == 1 and os.path.isdir(paths[0]):
    root = paths[0]
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.endswith(".jpg"))
model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
images = []
for path in paths:
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
scores = model.predict(np.stack(images).astype("float32"), batch_size=32, verbose=0)
for path, score in zip(paths, scores.reshape(-1)):
    print(path, "dogs" if score > 0.5 else "cats", float(score))
"""


def run(command: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """(wall seconds, peak resident memory in MiB) of one fresh process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a full pipe would block
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def build_model(photos: Path, work: Path) -> Path:
    catsdogs = str(BIN / "catsdogs")
    prepared, model = work / "prepared", work / "model"
    print(f"# preparing {photos} and training a 2-epoch model in {work}", file=sys.stderr)
    subprocess.run([catsdogs, "prepare", str(photos), "--out", str(prepared)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([catsdogs, "train", "--data", str(prepared), "--out", str(model),
                    "--epochs", "2"], check=True, stdout=subprocess.DEVNULL)
    return model


def link_photos(photos: list[Path], folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        source = photos[index % len(photos)]
        (folder / f"{index:05d}_{source.name}").symlink_to(source)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=SHARED)
    parser.add_argument("--model", type=Path, default=None,
                        help="an existing model folder (with model.onnx); default: train one")
    parser.add_argument("--repeats", type=int, default=5, help="cold single-photo runs")
    parser.add_argument("--bulk-repeats", type=int, default=3, help="runs over all photos")
    args = parser.parse_args()
    args.photos = args.photos.resolve()
    args.model = args.model.resolve() if args.model else None

    work = Path(tempfile.mkdtemp(prefix="catsdogs-predict-bench-"))
    try:
        model = args.model or build_model(args.photos, work)
        import json

        size = json.loads((model / "model.json").read_text())["image_size"]
        photos = sorted(p for p in args.photos.rglob("*.jpg"))
        photo = str(photos[0])
        catsdogs = str(BIN / "catsdogs")
        script = work / "plain_keras.py"
        script.write_text(PLAIN_KERAS)
        python = sys.executable
        load_before = os.getloadavg()

        cold = {
            "python -c 'import keras'": [python, "-c", "import keras"],
            "catsdogs predict photo.jpg (ONNX)": [catsdogs, "predict", photo, "--model",
                                                  str(model)],
            "catsdogs predict photo.jpg --no-tta (ONNX)": [
                catsdogs, "predict", photo, "--model", str(model), "--no-tta"],
            "catsdogs predict photo.jpg --engine keras": [
                catsdogs, "predict", photo, "--model", str(model), "--engine", "keras"],
            "plain Keras script, 1 photo": [python, str(script), str(model), str(size), photo],
        }
        run(cold["python -c 'import keras'"])  # warm the file cache once, untimed
        run(cold["catsdogs predict photo.jpg (ONNX)"])
        times: dict[str, list[float]] = {name: [] for name in cold}
        memory: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, command in cold.items():  # interleaved: load changes hit all alike
                seconds, rss = run(command)
                times[name].append(seconds)
                memory[name] = rss
        medians = {name: statistics.median(values) for name, values in times.items()}

        folder = str(args.photos)
        pattern = str(args.photos / "**" / "*.jpg")
        bulk = {
            "catsdogs predict 'DIR/**/*.jpg' --csv (ONNX)": [
                catsdogs, "predict", pattern, "--csv", "--model", str(model)],
            "catsdogs predict 'DIR/**/*.jpg' --csv --no-tta (ONNX)": [
                catsdogs, "predict", pattern, "--csv", "--model", str(model), "--no-tta"],
            "catsdogs predict 'DIR/**/*.jpg' --csv --engine keras": [
                catsdogs, "predict", pattern, "--csv", "--model", str(model), "--engine",
                "keras"],
            "plain Keras script (all photos in memory)": [python, str(script), str(model),
                                                          str(size), folder],
        }
        bulk_runs: dict[str, list[tuple[float, float]]] = {name: [] for name in bulk}
        for _ in range(args.bulk_repeats):  # interleaved, like the cold runs
            for name, command in bulk.items():
                bulk_runs[name].append(run(command))
        bulk_results = {
            name: (statistics.median(s for s, _ in runs), max(m for _, m in runs))
            for name, runs in bulk_runs.items()
        }

        small = link_photos(photos, work / "links1k", 1_000)
        large = link_photos(photos, work / "links10k", 10_000)
        scale = {}
        for label, target in (("1,000", small), ("10,000", large)):
            for flag in ("--csv", "--json"):
                scale[(label, flag)] = run([catsdogs, "predict", str(target), flag, "--model",
                                            str(model)])
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keras_import = medians["python -c 'import keras'"]
    ours = medians["catsdogs predict photo.jpg (ONNX)"]
    print("## predict\n")
    print(f"Measured by `python benchmarks/predict_bench.py --repeats {args.repeats} "
          f"--bulk-repeats {args.bulk_repeats}` on "
          f"{platform.node() or 'this machine'}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}. "
          f"Load average {load_before[0]:.1f} before and {load_after[0]:.1f} after: the "
          "machine was shared with other jobs, so treat the figures as rough; every "
          "comparison below was measured in the same run, interleaved.\n")
    print(f"Model: {'given' if args.model else 'trained by the script'} ({size} px, "
          f"{len(photos):,} photos in {args.photos}).\n")
    print(f"**Cold single photo** (fresh process, wall time, median of {args.repeats}):\n")
    print("| command | median s | min s | max s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{memory[name]:.0f} |")
    print(f"\n`catsdogs predict photo.jpg` / `import keras` = **{ours / keras_import:.2f}** "
          f"(target ≤ 0.5).\n")
    print(f"**All {len(photos):,} photos** (a fresh process each, wall time including "
          f"start-up, median of {args.bulk_repeats} interleaved runs):\n")
    print("| command | wall s | photos/s | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, (seconds, rss) in bulk_results.items():
        print(f"| {name} | {seconds:.1f} | {len(photos) / seconds:.0f} | {rss:.0f} |")
    print("\n**Flat memory** (`catsdogs predict DIR`, ONNX, symbolic links to the shared "
          "photos):\n")
    print("| photos | output | wall s | photos/s | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|")
    for (label, flag), (seconds, rss) in scale.items():
        count = int(label.replace(",", ""))
        print(f"| {label} | {flag} | {seconds:.1f} | {count / seconds:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
