"""``prepare(source, out, size)``: from a folder of photos to a prepared dataset."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep import safeio, store
from data_prep.discover import discover
from data_prep.images import MIN_SIDE, RESIZE_POLICIES, ImageError, load_photo


@dataclass
class PrepareResult:
    """What :func:`prepare` did, for the CLI to report."""

    out: Path
    classes: list[str]
    counts: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    reused: bool = False
    test_count: int = 0

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped).most_common())


def fingerprint(files: list[tuple[Path, str]], size: int, policy: str,
                test_fraction: float, seed: int) -> str:
    """A digest of the source listing (names, sizes, mtimes) and the options."""
    digest = hashlib.sha256(f"{size}|{policy}|{test_fraction}|{seed}".encode())
    for path, label in files:
        try:
            stat = path.stat()
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|{label}|missing\n".encode())
    return digest.hexdigest()


def content_hashes(files: list[tuple[Path, str]]) -> list[str | None]:
    """blake2b of each file's bytes (None when unreadable), to find exact duplicates."""
    hashes: list[str | None] = []
    for path, _ in files:
        try:
            digest = hashlib.blake2b()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            hashes.append(digest.hexdigest())
        except OSError:
            hashes.append(None)
    return hashes


def plan_duplicates(
    files: list[tuple[Path, str]], hashes: list[str | None]
) -> dict[int, str]:
    """Indices of files to skip, with the reason: later copies, and label conflicts."""
    by_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        if digest is not None:
            by_hash.setdefault(digest, []).append(index)
    skip: dict[int, str] = {}
    for indices in by_hash.values():
        if len(indices) < 2:
            continue
        labels = {files[i][1] for i in indices}
        if len(labels) > 1:
            for i in indices:
                skip[i] = "label conflict (same bytes in several classes)"
        else:
            for i in indices[1:]:
                skip[i] = f"duplicate of {files[indices[0]][0]}"
    return skip


def split_column(labels: np.ndarray, test_fraction: float, seed: int) -> list[str]:
    """A stratified, seeded 'train'/'test' marking of ``labels``."""
    split = np.array(["train"] * len(labels), dtype=object)
    if test_fraction > 0:
        rng = np.random.default_rng(seed)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            count = int(round(len(members) * test_fraction))
            split[rng.permutation(members)[:count]] = "test"
    return list(split)


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


@safeio.locks_output("out", not_inside="source")  # one writer per --out; see safeio
def prepare(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int = 128,
    policy: str = "stretch",
    *,
    force: bool = False,
    test_fraction: float = 0.0,
    seed: int = 1337,
) -> PrepareResult:
    """Find, check, decode and resize every photo under ``source`` into a dataset at ``out``.

    The source folder is only read. The dataset is built beside ``out`` and moved into place
    when complete. Raises ``FileNotFoundError``/``ValueError`` with a one-line message for
    unusable input.
    """
    started = time.perf_counter()
    if size < MIN_SIDE:
        raise ValueError(f"--size must be at least {MIN_SIDE}, got {size}")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    source_path = Path(source)
    out_path = Path(out)
    found = discover(source_path)
    if out_path.resolve().is_relative_to(source_path.resolve()):
        raise ValueError(f"--out {out_path} is inside the source folder; choose another place")

    digest = fingerprint(found.files, size, policy, test_fraction, seed)
    if store.is_dataset(out_path):
        try:
            existing = store.read_dataset(out_path)
        except ValueError:
            existing = None
        if existing is not None and existing.info.get("fingerprint") == digest:
            info = existing.info
            return PrepareResult(
                out_path, info["classes"], info["counts"],
                list(existing.skipped_rows()), time.perf_counter() - started,
                reused=True, test_count=int(info.get("num_test", 0)),
            )
    store.check_destination(out_path, force)

    skip = plan_duplicates(found.files, content_hashes(found.files))
    tmp = safeio.temporary_sibling(out_path)
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8,
            shape=(len(found.files), size, size, 3),
        )
        header_length = images.offset
        safeio.reserve_space(tmp / "images.npy")  # ENOSPC now, not SIGBUS mid-write
        rows: list[tuple[str, str, int, int]] = []
        skipped: list[tuple[str, str]] = []
        for index, (path, label) in enumerate(found.files):
            if index in skip:
                skipped.append((str(path), skip[index]))
                continue
            try:
                pixels, width, height = load_photo(path, size, policy)
            except ImageError as error:
                skipped.append((str(path), error.reason))
                continue
            images[len(rows)] = pixels
            rows.append((os.path.abspath(path), label, width, height))
        images.flush()
        del images
        kept = len(rows)
        with open(tmp / "images.npy", "r+b") as handle:
            handle.truncate(header_length + kept * size * size * 3)
        rewrite_npy_header(tmp / "images.npy", (kept, size, size, 3), header_length)

        counts = Counter(label for _, label, _, _ in rows)
        classes = [name for name in found.classes if counts[name] > 0]
        if not rows:
            raise ValueError(f"no usable photo in {source_path} ({len(skipped)} skipped)")
        if len(classes) < 2:
            raise ValueError(
                f"only one class ({classes[0]}) has usable photos in {source_path}; "
                "need at least two"
            )
        result = _write(tmp, rows, skipped, classes, size, policy, found.layout,
                        source_path, digest, test_fraction, seed)
        safeio.publish_folder(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out_path
    result.seconds = time.perf_counter() - started
    return result


def _write(tmp: Path, rows: list[tuple[str, str, int, int]], skipped: list[tuple[str, str]],
           classes: list[str], size: int, policy: str, layout: str, source: Path,
           digest: str, test_fraction: float, seed: int) -> PrepareResult:
    import pandas as pd

    label_of = {name: i for i, name in enumerate(classes)}
    labels = np.array([label_of[label] for _, label, _, _ in rows])
    manifest = pd.DataFrame({
        "index": np.arange(len(rows)),
        "path": [path for path, _, _, _ in rows],
        "label": labels,
        "class_name": [label for _, label, _, _ in rows],
        "width": [w for _, _, w, _ in rows],
        "height": [h for _, _, _, h in rows],
        "split": split_column(labels, test_fraction, seed),
    })
    skipped_frame = pd.DataFrame(skipped, columns=store.SKIPPED_COLUMNS)
    counts = {name: int((manifest["class_name"] == name).sum()) for name in classes}
    result = PrepareResult(tmp, classes, counts, skipped,
                           test_count=int((manifest["split"] == "test").sum()))
    info = {
        "format": store.FORMAT,
        "image_size": size,
        "resize_policy": policy,
        "channel_order": "RGB",
        "dtype": "uint8",
        "classes": classes,
        "counts": counts,
        "num_images": len(rows),
        "num_test": result.test_count,
        "num_skipped": len(skipped),
        "skipped_by_reason": result.skipped_by_reason,
        "test_fraction": test_fraction,
        "seed": seed,
        "source": os.path.abspath(source),
        "layout": layout,
        "fingerprint": digest,
        "catsdogs_version": store.package_version(),
    }
    store.write_tables(tmp, manifest, skipped_frame, info)
    return result
