"""Writing folders and files whole or not at all: build aside, fsync, rename into place."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden path beside ``path`` (same filesystem, so a rename is atomic)."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` (not recursive) and the folder itself to disk."""
    for child in folder.iterdir():
        if child.is_file():
            fsync_path(child)
    fsync_path(folder)


def replace_file(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` and rename it over ``final``."""
    fsync_path(tmp)
    os.replace(tmp, final)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_folder(tmp: Path, out: Path) -> None:
    """Move the complete folder ``tmp`` to ``out``, replacing what is there.

    The caller has already decided that ``out`` may be replaced (it is empty, or it is an
    output of ours and ``--force`` was given). The old folder is first renamed aside and
    removed only once the new one is in place.
    """
    fsync_tree(tmp)
    if out.exists():
        old = temporary_sibling(out, "old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_path(out.parent)
