"""data_prep.split: the one stratified split behind --test-fraction and --validation-split."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.split import ClassTooSmall, stratified_split


def test_each_class_gives_its_share_and_the_two_sides_cover_the_photos():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[held]).tolist() == [10, 6, 4]
    assert np.bincount(labels[kept]).tolist() == [40, 24, 16]
    assert sorted([*kept, *held]) == list(range(100))
    assert kept.tolist() == sorted(kept) and held.tolist() == sorted(held)


def test_the_seed_decides_which_photos():
    labels = np.array([0, 1] * 40)
    first = stratified_split(labels, 0.25, seed=1)[1]
    assert first.tolist() == stratified_split(labels, 0.25, seed=1)[1].tolist()
    assert first.tolist() != stratified_split(labels, 0.25, seed=2)[1].tolist()


def test_a_class_whose_share_rounds_to_nothing_gives_one_photo():
    labels = np.array([0] * 40 + [1] * 4)
    kept, held = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [4, 1]
    assert np.bincount(labels[kept]).tolist() == [36, 3]


@pytest.mark.parametrize("count, share", [(1, 0.1), (2, 0.75), (3, 0.9)])
def test_a_class_that_cannot_keep_a_photo_is_refused(count, share):
    labels = np.array([0] * 40 + [1] * count)
    with pytest.raises(ClassTooSmall) as refused:
        stratified_split(labels, share, seed=0)
    assert (refused.value.label, refused.value.count, refused.value.share) == (1, count, share)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(np.array([0, 0, 1, 1]), share, seed=0)
