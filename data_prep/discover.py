"""Find candidate photos in a folder and work out their class names.

Two layouts are understood:

* class sub-folders: ``SOURCE/cats/*.jpg``, ``SOURCE/Dog/**/x.png`` (any folder names; files
  are found recursively inside each class folder);
* Kaggle's flat layout: ``SOURCE/cat.123.jpg``, ``SOURCE/dog.45.jpg`` (the class is the part of
  the name before the first dot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Files that operating systems leave behind; never photos, never reported.
CLUTTER_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})


def printable(name: str | os.PathLike[str]) -> str:
    """A file name or path as text that any UTF-8 file can hold.

    A name that is not valid UTF-8 (``café.jpg`` written by an old Windows tool, in Latin-1)
    reaches Python with its stray bytes as lone surrogates, which cannot be encoded: such
    bytes are written as ``\\xe9``. Valid names are returned unchanged.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_clutter(name: str) -> bool:
    """True for operating-system clutter and hidden files (``.DS_Store``, ``._x.jpg``...)."""
    return name.startswith(".") or name.lower() in CLUTTER_NAMES


@dataclass
class Discovery:
    """What :func:`discover` found: candidate files with their class, in a stable order."""

    layout: str  # "folders" or "flat"
    classes: list[str]
    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, class name)


def _walk_files(folder: Path) -> list[Path]:
    """Every non-clutter file below ``folder``, following symbolic links, surviving loops."""
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a symlink loop or a second link to the same folder
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not is_clutter(d))
        for name in sorted(files):
            path = Path(root) / name
            if not is_clutter(name) and path.is_file():
                found.append(path)
    return found


def _flat_class(name: str) -> str | None:
    stem, dot, _ = printable(name).partition(".")
    return stem.lower() if dot and stem else None


def discover(source: str | os.PathLike[str]) -> Discovery:
    """List the candidate photos under ``source`` and their class names.

    Raises ``FileNotFoundError`` when ``source`` does not exist and ``ValueError`` when it is
    not a folder or holds no candidate files. Whether a candidate really is a photo is decided
    later, by decoding it.
    """
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"source folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"source is not a folder: {root}")

    entries = sorted(root.iterdir(), key=lambda p: p.name)
    class_dirs = [p for p in entries if p.is_dir() and not is_clutter(p.name)]
    if class_dirs:
        files: list[tuple[Path, str]] = []
        classes: list[str] = []
        for folder in class_dirs:
            found = _walk_files(folder)
            if found:
                classes.append(printable(folder.name))
                files.extend((path, printable(folder.name)) for path in found)
        if files:
            return Discovery("folders", classes, files)

    flat: list[tuple[Path, str]] = []
    for path in entries:
        if path.is_file() and not is_clutter(path.name):
            label = _flat_class(path.name)
            if label is not None:
                flat.append((path, label))
    if not flat:
        raise ValueError(
            f"no photos found in {root}: expected class sub-folders (cats/, dogs/) "
            "or files named like cat.1.jpg and dog.1.jpg"
        )
    return Discovery("flat", sorted({label for _, label in flat}), flat)
