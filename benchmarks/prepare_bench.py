"""Benchmark ``catsdogs prepare`` against a serial OpenCV loop and Keras' directory loader.

Each measurement runs in its own subprocess; its peak memory is the largest sum of the
resident set sizes of that subprocess and all its descendants (prepare's worker processes
included), sampled every 20 ms with psutil. Times cover the work only (imports excluded):

* ``prepare``: ``data_prep.prepare(...)`` with all workers, output to a temporary folder
  (worker start-up, both passes, writing the dataset files, fsync and rename included);
* ``serial``: the classic loop, ``cv2.imread`` + ``cv2.resize`` per file into a Python list,
  then ``np.stack`` (one core);
* ``keras``: ``keras.utils.image_dataset_from_directory(..., shuffle=False)`` and one full
  pass over its batches (TensorFlow backend, its own parallelism).

Then prepare's peak memory on the 2,000 shared photos against 20,000 distinct photos made by
cropping and re-encoding them (cached in --big-folder, outside the repository).

    pip install -e ".[bench]"                                # psutil
    python benchmarks/prepare_bench.py                       # everything
    python benchmarks/prepare_bench.py --sizes 128 --no-keras
    python benchmarks/prepare_bench.py --quality             # reduced-decode pixel error

After each size, the ceiling: per-photo costs measured in one process (a 1/8-scale decode,
the least work libjpeg-turbo can do for a JPEG; the decode at the reduction prepare is
allowed; prepare's whole per-photo work), each turned into the most images/s it could
reach on every core with zero overhead, and compared with the baselines of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path("/work/shared/data/catsdogs/train")
BIG = Path(tempfile.gettempdir()) / "catsdogs_bench_20k"
LARGE = Path(tempfile.gettempdir()) / "catsdogs_bench_12mp"


# ------------------------------------------------------------------------------------------
# Children: one method, one size, one folder; print a JSON line.

def cpu_seconds() -> float:
    """CPU time of this process (all threads), its reaped children, and its live descendants
    with the children they reaped (prepare's workers are forked by a forkserver child)."""
    import resource

    import psutil

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for process in psutil.Process().children(recursive=True):
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def child(method: str, size: int, source: Path, workers: int | None) -> None:
    import cv2
    import numpy as np

    if method == "prepare":
        from data_prep.prepare import prepare

        out = Path(tempfile.mkdtemp(prefix="catsdogs_bench_")) / "prepared"
        cpu_started = cpu_seconds()
        started = time.perf_counter()
        result = prepare(source, out, size, workers=workers)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
        count = sum(result.counts.values())
        shutil.rmtree(out.parent)
    elif method == "serial":
        paths = sorted(p for p in source.rglob("*.jpg") if not p.name.startswith("."))
        cpu_started = cpu_seconds()
        started = time.perf_counter()
        images = []
        for path in paths:
            image = cv2.imread(str(path))
            images.append(cv2.resize(image, (size, size)))
        array = np.stack(images)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
        count = len(array)
    elif method == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        cpu_started = cpu_seconds()
        started = time.perf_counter()
        dataset = keras.utils.image_dataset_from_directory(
            source, image_size=(size, size), batch_size=32, shuffle=False, verbose=False)
        count = 0
        for images, _ in dataset:
            count += int(images.shape[0])
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
    elif method == "ceiling":
        print(json.dumps(ceiling(size, source)))
        return
    else:
        raise SystemExit(f"unknown method {method}")
    print(json.dumps({"method": method, "size": size, "images": count, "seconds": seconds,
                      "cpu_seconds": cpu}))


def ceiling(size: int, source: Path) -> dict:
    """The most any decoder built on OpenCV's libjpeg-turbo could do per core, measured in
    this process with one OpenCV thread, no pool and no output:

    * ``floor_ms``: decoding each photo (bytes already in memory) at 1/8 scale, the least
      work libjpeg-turbo can do for a JPEG (every coefficient must still be entropy-decoded),
      with no resize: no loader of full photos can beat this;
    * ``allowed_ms``: decoding each photo (bytes in memory) at the largest reduction the
      issue allows (one that never enlarges the photo afterwards), with no resize;
    * ``work_ms``: prepare's own per-photo work, ``photo_from_bytes(read_bytes(path))``
      (read, header checks, the allowed reduced decode, resize), with no pool and no writes.
    """
    import cv2
    import numpy as np

    from data_prep.images import decode, photo_from_bytes, read_bytes
    from data_prep.prepare import available_cores

    cv2.setNumThreads(1)
    paths = [str(p) for p in sorted(source.rglob("*.jpg")) if not p.name.startswith(".")]
    datas = [Path(p).read_bytes() for p in paths]
    buffers = [np.frombuffer(data, np.uint8) for data in datas]
    floor = allowed = work = float("inf")
    for _ in range(3):  # best of three: the least disturbed by anything else running
        started = time.perf_counter()
        for buffer in buffers:
            cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_8)
        floor = min(floor, time.perf_counter() - started)
        started = time.perf_counter()
        for data in datas:
            decode(data, size)
        allowed = min(allowed, time.perf_counter() - started)
        started = time.perf_counter()
        for path in paths:
            photo_from_bytes(read_bytes(path), size)
        work = min(work, time.perf_counter() - started)
    return {"method": "ceiling", "size": size, "images": len(paths),
            "cores": available_cores(), "floor_ms": floor * 1000 / len(paths),
            "allowed_ms": allowed * 1000 / len(paths),
            "work_ms": work * 1000 / len(paths)}


# ------------------------------------------------------------------------------------------
# Parent: run children, sample their memory.

def measure(method: str, size: int, source: Path, workers: int | None = None) -> dict:
    import psutil

    command = [sys.executable, __file__, "--child", method, "--size", str(size),
               "--source", str(source)]
    if workers:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{method} {size} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if method == "ceiling":
        return result
    result["peak_mb"] = peak / 2**20
    result["cpu_ms_per_image"] = result["cpu_seconds"] * 1000 / result["images"]
    result["per_second"] = result["images"] / result["seconds"]
    return result


def make_big(source: Path, folder: Path, count: int) -> Path:
    """``count`` distinct JPEGs made by random crops (70–95 % a side) of the shared photos,
    re-encoded at quality 90; made once and reused (a marker file records the count)."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(count):
        return folder
    import cv2
    import numpy as np

    shutil.rmtree(folder, ignore_errors=True)
    paths = sorted(p for p in source.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    made = 0
    while made < count:
        for path in paths:
            if made >= count:
                break
            image = cv2.imread(str(path))
            height, width = image.shape[:2]
            crop_h = int(height * rng.uniform(0.7, 0.95))
            crop_w = int(width * rng.uniform(0.7, 0.95))
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            target = folder / path.parent.name / f"{path.stem}.{made}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image[top : top + crop_h, left : left + crop_w],
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            made += 1
    marker.write_text(str(count))
    return folder


def make_large(source: Path, folder: Path, count: int) -> Path:
    """``count`` phone-sized photos (4032×3024, 12 megapixels): shared photos enlarged with
    INTER_CUBIC, with a little noise added (as a camera sensor would) so they do not
    compress unrealistically well, saved at JPEG quality 90; made once and reused."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(count):
        return folder
    import cv2
    import numpy as np

    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for kind in ("cats", "dogs"):
        for path in sorted((source / kind).glob("*.jpg"))[: count // 2]:
            image = cv2.resize(cv2.imread(str(path)), (4032, 3024),
                               interpolation=cv2.INTER_CUBIC)
            noise = rng.integers(-4, 5, size=image.shape, dtype=np.int16)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
            target = folder / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    marker.write_text(str(count))
    return folder


def quality(source: Path, size: int) -> dict:
    """Mean absolute pixel difference (0-255 scale) between prepare's pixels (reduced JPEG
    decode, then INTER_AREA) and a full decode followed by the same resize."""
    import cv2
    import numpy as np

    from data_prep.images import photo_from_bytes, reduction_for, resize

    errors: dict[int, list[float]] = {}
    worst = 0
    for path in sorted(source.rglob("*.jpg")):
        data = path.read_bytes()
        ours = photo_from_bytes(data, size)[0]
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        factor = reduction_for(full.shape[1], full.shape[0], size)
        difference = np.abs(ours.astype(np.int16) - resize(full, size))
        errors.setdefault(factor, []).append(float(difference.mean()))
        worst = max(worst, int(difference.max()))
    every = [e for values in errors.values() for e in values]
    return {"size": size, "photos": len(every), "mae_all": float(np.mean(every)),
            "by_factor": {f: {"photos": len(v), "mae": float(np.mean(v)),
                              "photo_max_mae": float(np.max(v))}
                          for f, v in sorted(errors.items())},
            "max_pixel_difference": worst}


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cores} cores, {model}; load average at start {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--source", type=Path, default=SHARED)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 300])
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--big-folder", type=Path, default=BIG)
    parser.add_argument("--big-count", type=int, default=20_000)
    parser.add_argument("--no-big", action="store_true")
    parser.add_argument("--large-folder", type=Path, default=LARGE)
    parser.add_argument("--large-count", type=int, default=300,
                        help="12-megapixel photos for the large-photo comparison (0: none)")
    parser.add_argument("--quality", action="store_true", help="only the pixel comparison")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size, args.source, args.workers)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.quality:
        for size in args.sizes:
            print(json.dumps(quality(args.source, size)), flush=True)
        return

    print(f"machine: {machine()}", flush=True)
    methods = ["prepare", "serial"] + ([] if args.no_keras else ["keras"])
    scenarios = [(size, args.source, "") for size in args.sizes]
    if args.large_count:
        started = time.perf_counter()
        large = make_large(args.source, args.large_folder, args.large_count)
        print(f"{args.large_count} photos of 12 MP in {large} ready in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        scenarios.append((128, large, " 12MP"))
    for size, source, tag in scenarios:
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
            for method in methods:
                result = measure(method, size, source)
                runs[method].append(result)
                print(f"  {size:>4} px{tag}  {method:<8} {result['seconds']:7.2f} s  "
                      f"{result['per_second']:6.0f} images/s  peak {result['peak_mb']:5.0f} MB"
                      f"  CPU {result['cpu_ms_per_image']:.2f} ms/image", flush=True)
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for method in methods:
            times = sorted(r["seconds"] for r in runs[method])
            images = runs[method][0]["images"]
            best[method] = images / times[0]
            cpu[method] = min(r["cpu_ms_per_image"] for r in runs[method])
            print(f"{size:>4} px{tag}  {method:<8} {images:>6} images  best {times[0]:6.2f} s "
                  f"median {times[len(times) // 2]:6.2f} s  {best[method]:6.0f} images/s "
                  f"(best)  peak {max(r['peak_mb'] for r in runs[method]):5.0f} MB  "
                  f"CPU {cpu[method]:.2f} ms/image (least)", flush=True)
        for other in methods[1:]:
            print(f"{size:>4} px{tag}  prepare / {other}: {best['prepare'] / best[other]:.2f}x "
                  f"images/s (best runs), {cpu[other] / cpu['prepare']:.2f}x less CPU per image",
                  flush=True)
        limit = measure("ceiling", size, source)
        cores = limit["cores"]
        for name, key in (("1/8-scale decode alone", "floor_ms"),
                          ("allowed reduced decode alone", "allowed_ms"),
                          ("prepare's per-photo work", "work_ms")):
            top = cores * 1000 / limit[key]
            versus = "  ".join(f"{top / best[other]:.2f}x {other}" for other in methods[1:])
            print(f"{size:>4} px{tag}  ceiling, {name}: {limit[key]:.3f} ms a photo per core, "
                  f"so at most {top:6.0f} images/s on {cores} cores = {versus}", flush=True)
    if not args.no_big:
        started = time.perf_counter()
        big = make_big(args.source, args.big_folder, args.big_count)
        print(f"{args.big_count:,} photos in {big} ready in {time.perf_counter() - started:.0f} s",
              flush=True)
        small = max((measure("prepare", 128, args.source) for _ in range(args.repeat)),
                    key=lambda r: r["peak_mb"])
        large = max((measure("prepare", 128, big) for _ in range(args.repeat)),
                    key=lambda r: r["peak_mb"])
        for result in (small, large):  # the run with the highest peak, of each
            print(f" 128 px  prepare  {result['images']:>6} images  {result['seconds']:7.2f} s  "
                  f"{result['per_second']:8.0f} images/s  peak {result['peak_mb']:7.0f} MB",
                  flush=True)
        print(f"peak memory 20,000 / 2,000 photos: {large['peak_mb'] / small['peak_mb']:.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
