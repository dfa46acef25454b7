"""The one stratified, seeded split of a dataset's photos in two.

``prepare --test-fraction`` holds test photos out with it, and ``train`` its validation photos
(``--validation-split``), so that both follow the same rule: every class gives the same share,
at least one photo, and keeps at least one.
"""

from __future__ import annotations

import numpy as np


class ClassTooSmall(ValueError):
    """A class with too few photos to give ``share`` of them and keep one."""

    def __init__(self, label: int, count: int, share: float) -> None:
        super().__init__(f"class {label} has {count} photo(s): too few to split {share:g} "
                         "of them off and keep one")
        self.label = label
        self.count = count
        self.share = share


def stratified_split(labels: np.ndarray, share: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, split-off indices) of ``labels``, each sorted: ``share`` of every
    class, rounded, split off at random, reproducibly for ``seed``. A class whose share
    rounds to no photo gives one; :class:`ClassTooSmall` for a class of one photo, or one
    whose share would leave it none to keep."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"the share to split off must be between 0 and 1, got {share}")
    rng = np.random.default_rng(seed)
    kept, split_off = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = max(1, int(round(len(members) * share)))
        if count >= len(members):
            raise ClassTooSmall(int(label), len(members), share)
        split_off.append(members[:count])
        kept.append(members[count:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(split_off))
