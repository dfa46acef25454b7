"""``prepare(source, out, size)``: from a folder of photos to a prepared dataset.

Two passes over the candidate files, each spread over ``workers`` processes:

1. **check**: files whose byte size another file shares are read, their header checked,
   and hashed if usable (only those can be exact duplicates); later copies are skipped, and
   the same bytes under two classes is a label conflict;
2. **resize**: every other file gets a row ("slot") of ``images.npy``, in discovery order;
   a worker reads the file once, checks its header (format, size, truncation, decompression
   bombs), decodes and resizes it and writes it straight into its row of the file.

No list of images is ever held in memory, so peak memory does not grow with the number of
photos, and the output is the same whatever the number of workers. A file that turns out
unusable leaves its row empty; at the end, later rows are moved up to close such holes.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data_prep import failpoints, safeio, split, store
from data_prep.discover import Discovery, discover, printable
from data_prep.images import (
    CHANNELS,
    MIN_SIDE,
    RESIZE_POLICIES,
    ImageError,
    check_size,
    photo_from_bytes,
    read_bytes,
    read_header,
)

PHOTOS_PER_WORKER = 64
"""With the default worker count, one worker process per this many photos at most (up to
every core): below that, starting processes costs more than it saves."""

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as files are done; stage is "checking" or
"resizing". The core never prints: the CLI draws a progress bar from these calls."""


class Skip(NamedTuple):
    """A candidate file that is not in the dataset: ``reason`` is a short, stable phrase
    (counted in the summary), ``detail`` says more (sizes, the copy it duplicates...)."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class PrepareResult:
    """What :func:`prepare` did, for the CLI to report."""

    out: Path
    classes: list[str]
    counts: dict[str, int]
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False
    test_count: int = 0
    workers: int = 1

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(skip.reason for skip in self.skipped).most_common())


def shown_path(path: str | os.PathLike[str]) -> str:
    """The absolute path of a file as manifest.csv, skipped.csv and messages show it."""
    return printable(os.path.abspath(path))


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def fingerprint(files: list[tuple[Path, str]], size: int, policy: str,
                test_fraction: float, seed: int, channels: int = 3) -> str:
    """A digest of the source listing (names, sizes, mtimes) and the options."""
    gray = "|gray" if channels == 1 else ""  # RGB datasets keep the digest they always had
    digest = hashlib.sha256(f"{size}|{policy}|{test_fraction}|{seed}{gray}".encode())
    for path, label in files:
        try:
            stat = path.stat()
            digest.update(os.fsencode(path))  # the name's own bytes, valid UTF-8 or not
            digest.update(f"|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(os.fsencode(path) + f"|{label}|missing\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The work done on each file, in a worker process (or in this one with workers=1).

class Hashed(NamedTuple):
    index: int
    digest: bytes | None  # blake2b of the bytes; None when the file is not a usable image
    reason: str
    detail: str


def hash_file(index: int, path: str) -> Hashed:
    """Pass 1: blake2b of one file's bytes, after checking its header (so that two copies of
    the same junk are reported as junk, not as duplicates or label conflicts)."""
    try:
        data = read_bytes(path)
        check_size(read_header(data))
    except ImageError as error:
        return Hashed(index, None, error.reason, error.detail)
    return Hashed(index, hashlib.blake2b(data, digest_size=16).digest(), "", "")


class Written(NamedTuple):
    index: int
    width: int
    height: int
    reason: str
    detail: str


_outputs: dict[str, int] = {}  # images.npy path -> open file descriptor, per process
_outputs_lock = threading.Lock()


def _output(path: str) -> int:
    with _outputs_lock:
        handle = _outputs.get(path)
        if handle is None:
            handle = _outputs[path] = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        return handle


def _close_outputs() -> None:
    while _outputs:
        os.close(_outputs.popitem()[1])


def write_photo(index: int, path: str, slot: int, npy: str, offset: int, size: int,
                policy: str, channels: int = 3) -> Written:
    """Pass 2: read one file once, check its header (format, size, truncation, bombs),
    decode and resize it (to gray for one channel), and write it into row ``slot`` of
    ``npy``."""
    failpoints.failpoint(failpoints.DECODE)  # tests: a worker dying, as on a decoder crash
    try:
        pixels, width, height = photo_from_bytes(read_bytes(path), size, policy, channels)
    except ImageError as error:
        return Written(index, 0, 0, error.reason, error.detail)
    row = pixels.tobytes()
    handle = _output(npy)
    if hasattr(os, "pwrite"):
        os.pwrite(handle, row, offset + slot * len(row))
    else:  # Windows: one descriptor per worker process, so seek + write is safe there
        os.lseek(handle, offset + slot * len(row), os.SEEK_SET)
        os.write(handle, row)
    return Written(index, width, height, "", "")


def _run_chunk(function: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [function(*args) for args in chunk]


def _exit_when_orphaned(parent_pid: int, interval: float = 0.25) -> None:
    """Exit this worker as soon as the main process is gone (killed with SIGKILL, say).

    Pool workers hold both ends of the pool's task pipe, so they never see it close and would
    otherwise wait forever, keeping the forkserver, the resource tracker and any pipe to a
    parent (a shell, a test) open.
    """

    def watch() -> None:
        while safeio.process_alive(parent_pid):
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _init_worker(parent_pid: int) -> None:
    import signal

    import cv2

    _exit_when_orphaned(parent_pid)

    # Ctrl-C goes to the whole process group: let the main process alone handle it (it stops
    # the pool and removes the unfinished dataset) instead of every worker dying noisily.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core already; no threads on top
    # libjpeg prints warnings ("Corrupt JPEG data: ...") straight to stderr; in workers they
    # would scribble over the progress bar. Problems are reported in skipped.csv instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


@contextlib.contextmanager
def _decoding_here() -> Iterator[None]:
    """Decode in this process as a worker process does: with one OpenCV thread, and with what
    libjpeg writes straight to file descriptor 2 ("Corrupt JPEG data: 2 extraneous bytes
    before marker 0xd9" for a photo it decodes fine) discarded, so it cannot scribble over
    the progress bar; problems that matter are reported in skipped.csv. Held around one
    chunk of files at a time, never while progress is drawn; both are restored after."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with safeio.native_stderr_to(None):
            yield
    finally:
        cv2.setNumThreads(threads)


def start_method() -> str:
    """How to start worker processes: never ``fork``. OpenCV's thread pool (used by
    cv2.resize in this process) and the threads of TensorFlow and friends do not survive a
    fork: the children deadlock. ``forkserver`` starts one clean process that imports
    OpenCV once and forks the workers from it; ``spawn`` where there is none."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class Workers:
    """Runs per-file work in ``count`` processes (or in this process when ``count`` is 1),
    handing each result to a callback as it comes, so progress can be reported."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool: Executor | None = None
        if count > 1:
            method = start_method()
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["data_prep.images"])
            self.pool = ProcessPoolExecutor(count, mp_context=context,
                                            initializer=_init_worker,
                                            initargs=(os.getpid(),))

    def run(self, function: Callable[..., Any], tasks: list[tuple[Any, ...]],
            on_result: Callable[[Any], None]) -> None:
        if self.pool is None:
            for start in range(0, len(tasks), 32):
                with _decoding_here():
                    results = [function(*args) for args in tasks[start : start + 32]]
                for result in results:  # outside the quiet window: on_result draws progress
                    on_result(result)
            return
        chunk_size = max(1, min(32, len(tasks) // (self.count * 8) or 1))
        chunks = (tasks[i : i + chunk_size] for i in range(0, len(tasks), chunk_size))
        pending: set[Future[list[Any]]] = set()
        try:
            for chunk in chunks:
                while len(pending) >= self.count * 4:  # a few chunks per worker in flight
                    self._collect(pending, on_result)
                pending.add(self.pool.submit(_run_chunk, function, chunk))
            while pending:
                self._collect(pending, on_result)
        except BrokenProcessPool:
            raise ValueError(
                "a worker process died while decoding (a crash inside OpenCV on some file); "
                "run again with --workers 1 to find it"
            ) from None

    @staticmethod
    def _collect(pending: set[Future[list[Any]]], on_result: Callable[[Any], None]) -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            pending.discard(future)
            for result in future.result():
                on_result(result)

    def close(self) -> None:
        _close_outputs()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------

def plan_duplicates(files: list[tuple[Path, str]], digests: list[bytes | None]
                    ) -> dict[int, Skip]:
    """Files to skip as copies: every copy after the first, and all copies of bytes that
    appear under more than one class (a label conflict)."""
    by_digest: dict[bytes, list[int]] = {}
    for index, digest in enumerate(digests):
        if digest is not None:
            by_digest.setdefault(digest, []).append(index)
    skip: dict[int, Skip] = {}
    for indices in by_digest.values():
        if len(indices) < 2:
            continue
        labels = sorted({files[i][1] for i in indices})
        if len(labels) > 1:
            for i in indices:
                skip[i] = Skip(shown_path(files[i][0]), "label conflict",
                               "same bytes in " + ", ".join(labels))
        else:
            for i in indices[1:]:
                skip[i] = Skip(shown_path(files[i][0]), "duplicate",
                               f"same bytes as {shown_path(files[indices[0]][0])}")
    return skip


def split_column(labels: np.ndarray, test_fraction: float, seed: int,
                 classes: list[str]) -> list[str]:
    """The 'train'/'test' marking of ``labels`` (indices into ``classes``): ``test_fraction``
    of every class held out by :func:`data_prep.split.stratified_split`, the rule that
    ``train --validation-split`` also follows; all 'train' for 0."""
    marks = np.array([store.TRAIN_SPLIT] * len(labels), dtype=object)
    if test_fraction > 0:
        try:
            _, test = split.stratified_split(labels, test_fraction, seed)
        except split.ClassTooSmall as small:
            raise ValueError(too_few_to_test(classes[small.label], small.count,
                                             test_fraction)) from None
        marks[test] = store.TEST_SPLIT
    return list(marks)


def too_few_to_test(name: str, count: int, test_fraction: float) -> str:
    """The error for a class that cannot give test photos and keep training ones."""
    if count == 1:
        return (f"{name} has 1 usable photo: holding photos out for testing (--test-fraction) "
                "needs at least 2 in each class, one to test on and one to train on; add "
                "photos or leave out --test-fraction")
    return (f"{name} has {count} usable photos: too few to hold {test_fraction:g} of them out "
            "for testing and keep one to train on (--test-fraction); add photos or lower "
            "the fraction")


def rewrite_npy_header(path: Path, shape: tuple[int, ...], header_length: int) -> None:
    """Shrink the shape recorded in an .npy file in place, keeping the header's length."""
    body = "{'descr': '|u1', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "")
    )
    prefix = b"\x93NUMPY\x01\x00"
    room = header_length - len(prefix) - 2
    text = body.ljust(room - 1) + "\n"
    if len(text) != room:
        raise RuntimeError("npy header does not fit")  # cannot happen: shapes only shrink
    with open(path, "r+b") as handle:
        handle.write(prefix + room.to_bytes(2, "little") + text.encode("latin1"))


def create_npy(path: Path, count: int, size: int, channels: int = 3) -> int:
    """An images.npy for ``count`` rows (sparse: no pixel written yet); returns the data
    offset, where row ``i`` starts at ``offset + i * size * size * channels``."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                       shape=(count, size, size, channels))
    offset = int(images.offset)
    del images
    return offset


def close_holes(path: Path, offset: int, row_bytes: int, slots: list[int]) -> None:
    """Move rows ``slots`` (ascending) to rows 0, 1, 2... of the file, in place, one row at a
    time (every move goes to a lower row, so nothing is overwritten before it is read)."""
    with open(path, "r+b") as handle:
        for target, slot in enumerate(slots):
            if slot != target:
                handle.seek(offset + slot * row_bytes)
                row = handle.read(row_bytes)
                handle.seek(offset + target * row_bytes)
                handle.write(row)


def prepare(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int = 128,
    policy: str = "stretch",
    *,
    force: bool = False,
    test_fraction: float = 0.0,
    seed: int = 1337,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    channels: int = 3,
) -> PrepareResult:
    """Find, check, decode and resize every photo under ``source`` into a dataset at ``out``.

    ``channels`` is 3 for RGB images, 1 for gray ones (converted from RGB after the resize,
    by :func:`data_prep.images.load_image`'s code, as prediction converts a photo).

    ``workers`` processes decode in parallel (default: every core, at most one per
    ``PHOTOS_PER_WORKER`` photos; 1 decodes in this process). As with any use of
    multiprocessing, a script that calls this must do so under ``if __name__ ==
    "__main__":`` (worker processes import the main module). The source folder is only
    read. The dataset is built beside ``out`` and moved into place when
    complete. ``progress(stage, done, total)`` is called as files are done. Raises
    ``FileNotFoundError``/``ValueError`` with a one-line message for unusable input.
    """
    started = time.perf_counter()
    check_options(size, policy, test_fraction, workers, channels)
    source_path, out_path = Path(source), Path(out)
    found = discover(source_path)
    digest = fingerprint(found.files, size, policy, test_fraction, seed, channels)
    result = reusable_dataset(out_path, digest)
    if result is None:
        count = worker_count(workers, len(found.files))
        report = progress or (lambda stage, done, total: None)
        with safeio.output_folder(out_path, kind="dataset", force=force,
                                  is_ours=store.is_dataset,
                                  held="a different prepared dataset",
                                  not_inside=source_path) as build:
            with Workers(count) as pool:
                skips = check_files(pool, found.files, report)
                written = resize_files(pool, found.files, skips, build.path / "images.npy",
                                       (size, policy, channels), report)
            result = finish_dataset(build.path, source_path, found, written, skips, size,
                                    policy, Options(digest, test_fraction, seed, channels))
        result.out, result.workers = out_path, count
    result.seconds = time.perf_counter() - started
    return result


def check_options(size: int, policy: str, test_fraction: float, workers: int | None,
                  channels: int = 3) -> None:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if size < MIN_SIDE:
        raise ValueError(f"--size must be at least {MIN_SIDE}, got {size}")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")


def worker_count(workers: int | None, files: int) -> int:
    """Processes to use: ``workers``, or by default every core but no more than one per
    ``PHOTOS_PER_WORKER`` photos (starting a process costs more than ~50 photos)."""
    if workers is None:
        workers = max(1, min(available_cores(), files // PHOTOS_PER_WORKER))
    return max(1, min(workers, files))


def reusable_dataset(out: Path, digest: str) -> PrepareResult | None:
    """The dataset already at ``out`` when it was prepared from the same files with the same
    options (same fingerprint): nothing needs doing. Else None."""
    if not store.is_dataset(out):
        return None
    try:
        existing = store.read_dataset(out)
    except ValueError:
        return None
    info = existing.info
    if info.get("fingerprint") != digest:
        return None
    return PrepareResult(out, info["classes"], info["counts"],
                         [Skip(*row) for row in existing.skipped_rows()],
                         reused=True, test_count=int(info.get("num_test", 0)))


def check_files(pool: Workers, files: list[tuple[Path, str]], report: ProgressCallback
                ) -> dict[int, Skip]:
    """Pass 1: only files of the same byte size can be copies of each other: hash those
    (usually few) to find exact duplicates and label conflicts. Returns the files to skip."""
    sizes_in_bytes = [_byte_size(path) for path, _ in files]
    shared = {n for n, k in Counter(sizes_in_bytes).items() if k > 1 and n > 0}
    to_hash = [(i, str(path)) for i, (path, _) in enumerate(files)
               if sizes_in_bytes[i] in shared]
    digests: list[bytes | None] = [None] * len(files)
    skips: dict[int, Skip] = {}
    done = 0

    def on_hashed(result: Hashed) -> None:
        nonlocal done
        digests[result.index] = result.digest
        if result.reason:
            skips[result.index] = Skip(shown_path(files[result.index][0]), result.reason,
                                       result.detail)
        done += 1
        report("checking", done, len(to_hash))

    pool.run(hash_file, to_hash, on_hashed)
    skips.update(plan_duplicates(files, digests))
    return skips


@dataclass
class Resized:
    """What pass 2 wrote into ``npy``: the row ("slot") given to each file, and the original
    (width, height) of each file that was written (a file missing here left its row empty)."""

    npy: Path
    offset: int
    slot_of: dict[int, int]
    sizes: dict[int, tuple[int, int]]


def resize_files(pool: Workers, files: list[tuple[Path, str]], skips: dict[int, Skip],
                 npy: Path, shape: tuple[int, str, int], report: ProgressCallback) -> Resized:
    """Pass 2: decode and resize into ``npy``, each photo into its own row; ``shape`` is
    (size, resize policy, channels). Files that turn out unusable are added to ``skips``."""
    size, policy, channels = shape
    slot_of = {i: slot for slot, i in
               enumerate(i for i in range(len(files)) if i not in skips)}
    offset = create_npy(npy, len(slot_of), size, channels)
    safeio.reserve_space(npy)  # a full disk fails here, with ENOSPC, not mid-write
    sizes: dict[int, tuple[int, int]] = {}
    done = 0

    def on_written(result: Written) -> None:
        nonlocal done
        if result.reason:
            skips[result.index] = Skip(shown_path(files[result.index][0]), result.reason,
                                       result.detail)
        else:
            sizes[result.index] = (result.width, result.height)
        done += 1
        report("resizing", done, len(slot_of))

    pool.run(write_photo,
             [(i, str(files[i][0]), slot, str(npy), offset, size, policy, channels)
              for i, slot in slot_of.items()],
             on_written)
    return Resized(npy, offset, slot_of, sizes)


class Options(NamedTuple):
    """The options recorded in dataset.json besides size and policy."""

    fingerprint: str
    test_fraction: float
    seed: int
    channels: int = 3


def finish_dataset(folder: Path, source: Path, found: Discovery, written: Resized,
                   skips: dict[int, Skip], size: int, policy: str, options: Options
                   ) -> PrepareResult:
    """Close the holes unusable files left in images.npy, then write the tables."""
    files = found.files
    kept = sorted(written.sizes)
    row_bytes = size * size * options.channels
    if len(kept) < len(written.slot_of):
        close_holes(written.npy, written.offset, row_bytes, [written.slot_of[i] for i in kept])
    with open(written.npy, "r+b") as handle:
        handle.truncate(written.offset + len(kept) * row_bytes)
    rewrite_npy_header(written.npy, (len(kept), size, size, options.channels), written.offset)

    rows = [(shown_path(files[i][0]), files[i][1], *written.sizes[i]) for i in kept]
    skipped = [skips[i] for i in sorted(skips)]
    counts = Counter(label for _, label, _, _ in rows)
    classes = [name for name in found.classes if counts[name] > 0]
    if not rows:
        raise ValueError(f"no usable photo in {source} ({len(skipped)} skipped)")
    if len(classes) < 2:
        raise ValueError(
            f"only one class ({classes[0]}) has usable photos in {source}; "
            "need at least two"
        )
    return _write(folder, rows, skipped, classes, size, policy, found.layout, source, options)


def _byte_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _write(tmp: Path, rows: list[tuple[str, str, int, int]], skipped: list[Skip],
           classes: list[str], size: int, policy: str, layout: str, source: Path,
           options: Options) -> PrepareResult:
    label_of = {name: i for i, name in enumerate(classes)}
    labels = np.array([label_of[label] for _, label, _, _ in rows])
    marks = split_column(labels, options.test_fraction, options.seed, classes)
    manifest = ((index, path, label_of[name], name, width, height, marks[index])
                for index, (path, name, width, height) in enumerate(rows))
    counts = dict.fromkeys(classes, 0)
    for _, name, _, _ in rows:
        counts[name] += 1
    result = PrepareResult(tmp, classes, counts, skipped, test_count=marks.count(store.TEST_SPLIT))
    info = {
        "format": store.FORMAT,
        "image_size": size,
        "resize_policy": policy,
        "channels": options.channels,
        "channel_order": "RGB" if options.channels == 3 else "gray",
        "dtype": "uint8",
        "classes": classes,
        "counts": counts,
        "num_images": len(rows),
        "num_test": result.test_count,
        "num_skipped": len(skipped),
        "skipped_by_reason": result.skipped_by_reason,
        "test_fraction": options.test_fraction,
        "seed": options.seed,
        "source": shown_path(source),
        "layout": layout,
        "fingerprint": options.fingerprint,
        "catsdogs_version": store.package_version(),
    }
    store.write_tables(tmp, manifest, skipped, info)
    return result
