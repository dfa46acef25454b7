"""The prepared-dataset format, written whole or not at all.

A prepared dataset is a folder::

    images.npy     uint8 array (N, size, size, channels): RGB (3 channels) or gray (1),
                   loadable with np.load(mmap_mode="r")
    manifest.csv   one row per image in images.npy, in the same order:
                   index, path, label, class_name, width, height, split
    skipped.csv    path, reason, detail: every candidate file that was not used
    dataset.json   format, image_size, resize_policy, channels (absent: 3), channel_order
                   ("RGB" or "gray"), dtype, classes,
                   counts, num_images, num_test, num_skipped, skipped_by_reason,
                   test_fraction, seed, source, layout, fingerprint, catsdogs_version

It is built in a hidden temporary folder beside the destination and renamed into place only
when complete, so an interrupted run never leaves something ``train`` would accept.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_prep import safeio

if TYPE_CHECKING:
    import pandas as pd

FORMAT = "catsdogs-dataset/1"
MANIFEST_COLUMNS = ["index", "path", "label", "class_name", "width", "height", "split"]
# manifest.csv's split of a photo: set aside for evaluate (prepare --test-fraction), or not.
TEST_SPLIT, TRAIN_SPLIT = "test", "train"
SKIPPED_COLUMNS = ["path", "reason", "detail"]


@dataclass
class PreparedDataset:
    """A prepared dataset opened for reading; ``images`` is a read-only memory map."""

    path: Path
    info: dict[str, Any]
    manifest: pd.DataFrame
    images: np.ndarray

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def channels(self) -> int:
        """3 for RGB images, 1 for gray ones (datasets from before gray say nothing: 3)."""
        return int(self.info.get("channels", 3))

    def test_rows(self) -> np.ndarray:
        """The manifest rows set aside for ``evaluate`` (``prepare --test-fraction``): never
        trained on. Empty when the dataset has no test split."""
        return np.flatnonzero(self._in_test_split())

    def training_rows(self) -> np.ndarray:
        """The manifest rows training may see: all but the test split's."""
        return np.flatnonzero(~self._in_test_split())

    def _in_test_split(self) -> np.ndarray:
        if "split" not in self.manifest.columns:
            return np.zeros(len(self.manifest), dtype=bool)
        return self.manifest["split"].astype(str).to_numpy() == TEST_SPLIT

    def skipped_rows(self) -> list[tuple[str, str, str]]:
        """(path, reason, detail) for every skipped file (detail is "" in older datasets)."""
        import pandas as pd

        frame = pd.read_csv(self.path / "skipped.csv", keep_default_na=False, dtype=str)
        details = frame["detail"] if "detail" in frame else [""] * len(frame)
        return list(zip(frame["path"], frame["reason"], details, strict=True))


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("catsdogs")
    except PackageNotFoundError:
        return "unknown"


def is_dataset(path: Path) -> bool:
    return (path / "dataset.json").is_file()


def read_dataset(path: str | os.PathLike[str]) -> PreparedDataset:
    """Open a prepared dataset, checking that its files agree with each other."""
    import pandas as pd

    root = Path(path)
    if not root.is_dir():
        safeio.restore_interrupted(root)  # a writer killed mid-publish left it aside
    if not root.is_dir():
        raise FileNotFoundError(
            f"no prepared dataset at {root}: run 'catsdogs prepare' first"
        )
    if not is_dataset(root):
        raise ValueError(f"{root} is not a prepared dataset (no dataset.json)")
    try:
        info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        manifest = pd.read_csv(root / "manifest.csv", keep_default_na=False)
        images = np.load(root / "images.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"broken prepared dataset at {root}: {error}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{root}/dataset.json is not a {FORMAT} file")
    size = info.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{root}/dataset.json: 'image_size' must be a whole number")
    channels = info.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"{root}/dataset.json: 'channels' must be 1 (gray) or 3 (RGB)")
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, channels):
        colour = "RGB" if channels == 3 else "gray"
        raise ValueError(f"{root}/images.npy does not hold {size}x{size} {colour} uint8 images")
    if len(manifest) != len(images):
        raise ValueError(
            f"broken prepared dataset at {root}: manifest has {len(manifest)} rows "
            f"but images.npy holds {len(images)} images"
        )
    return PreparedDataset(root, info, manifest, images)


def check_destination(out: Path, force: bool) -> None:
    """Refuse to replace anything but a catsdogs dataset, and that only with ``force``."""
    safeio.check_replaceable(out, force, is_dataset, "a prepared dataset",
                             "a different prepared dataset")


def write_tables(folder: Path, manifest: Iterable[Sequence[Any]],
                 skipped: Iterable[Sequence[Any]], info: dict[str, Any]) -> None:
    """Write manifest.csv (rows in MANIFEST_COLUMNS order), skipped.csv (rows in
    SKIPPED_COLUMNS order) and dataset.json into ``folder``. Plain ``csv``: no pandas import
    on the way out."""
    for name, columns, rows in (("manifest.csv", MANIFEST_COLUMNS, manifest),
                                ("skipped.csv", SKIPPED_COLUMNS, skipped)):
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(rows)
    safeio.write_json_atomic(folder / "dataset.json", info)
