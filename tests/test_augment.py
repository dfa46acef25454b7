"""The uint8 augmentation of the input pipeline, and the settings that replaced the old flag."""

from __future__ import annotations

import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.config import TrainConfig, format_duration, parse_duration
from catsdogs.data import (
    CROP_AREA,
    GRAY_SHARE,
    JITTER,
    ImageBatches,
    augment_batch,
    crop_box,
    mix_batch,
)
from tests.helpers import assert_clean_exit


def photos(count: int = 8, side: int = 24, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, side, side, channels),
                                             dtype=np.uint8)


def test_crop_boxes_fit_inside_the_photo_with_the_drawn_area():
    rng = np.random.default_rng(5)
    shares = []
    for _ in range(300):
        top, left, height, width = crop_box(64, rng)
        assert 0 <= top and top + height <= 64 and 0 <= left and left + width <= 64
        assert 3 / 4 - 0.1 <= width / height <= 4 / 3 + 0.1 or (height, width) == (64, 64)
        shares.append(height * width / 64**2)
    assert CROP_AREA[0] - 0.05 <= min(shares) < 0.45 and max(shares) > 0.9


@pytest.mark.parametrize("channels", [3, 1])
def test_augment_batch_is_seeded_uint8_and_changes_the_photos(channels):
    images = photos(channels=channels)
    first = augment_batch(images, np.random.default_rng([1, 0, 3]))
    again = augment_batch(images, np.random.default_rng([1, 0, 3]))
    other = augment_batch(images, np.random.default_rng([1, 1, 3]))
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, images)


def test_flat_photos_keep_their_colour_up_to_the_jitter():
    """A photo of one colour stays flat (crops and flips change nothing), its brightness and
    contrast scaled by factors in ``JITTER`` and its saturation pulled towards or away from
    grey; ``GRAY_SHARE`` of them come back gray."""
    images = np.zeros((400, 24, 24, 3), dtype=np.uint8)
    images[...] = (200, 100, 50)
    out = augment_batch(images, np.random.default_rng(3))
    assert np.all(out == out[:, :1, :1])  # still flat
    pixels = out[:, 0, 0].astype(float)
    gray = (pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])
    assert 0.5 * GRAY_SHARE < gray.mean() < 1.6 * GRAY_SHARE
    # the gray level of (200, 100, 50) is 124; brightness × contrast moves it by at most
    # JITTER's factors around itself, so a gray photo stays within them
    low, high = JITTER
    assert pixels[gray, 0].min() >= low * 124 - 1 and pixels[gray, 0].max() <= high * 124 + 1
    assert pixels[gray, 0].min() < 0.9 * 124 and pixels[gray, 0].max() > 1.1 * 124
    colour = pixels[~gray]
    assert np.all(colour[:, 0] > colour[:, 2])  # red stays above blue in the colour ones
    assert len(set(colour[:, 0])) > 50  # a different factor per photo


def test_the_jitter_and_the_gray_share_can_be_given():
    """``jitter_range`` and ``gray_share`` replace ``JITTER`` and ``GRAY_SHARE`` for one call
    (what ``benchmarks/augment_cost.py`` times): factors of exactly 1 and no gray share give
    the flat photo back unchanged; a gray share of 1 turns every colour photo gray."""
    images = np.zeros((40, 24, 24, 3), dtype=np.uint8)
    images[...] = (200, 100, 50)
    same = augment_batch(images, np.random.default_rng(3), jitter_range=(1.0, 1.0),
                         gray_share=0.0)
    assert np.array_equal(same, images)
    gray = augment_batch(images, np.random.default_rng(3), jitter_range=(1.0, 1.0),
                         gray_share=1.0)
    assert np.all(gray == 124)  # the gray level of (200, 100, 50), in all three channels
    default = augment_batch(images, np.random.default_rng(3))
    assert np.array_equal(default, augment_batch(images, np.random.default_rng(3),
                                                 jitter_range=JITTER, gray_share=GRAY_SHARE))


def test_gray_photos_draw_no_gray_share():
    """One-channel photos are gray already: none of their draws is spent on it, so a gray
    dataset's augmentation is what it was before GRAY_SHARE."""
    images = photos(count=6, channels=1)
    rng = np.random.default_rng(4)
    augment_batch(images, rng)
    mirror = np.random.default_rng(4)
    mirror.uniform(*JITTER, size=(6, 3))
    for _ in range(6):
        crop_box(24, mirror)
        mirror.random()
    assert rng.random() == mirror.random()


def test_mirror_flip_happens_about_half_the_time():
    """With the crop the whole photo (area 1), a left-right ramp comes back either as it is or
    mirrored."""
    ramp = np.tile(np.linspace(0, 250, 24, dtype=np.uint8)[None, :, None], (24, 1, 1))
    images = np.repeat(ramp[None], 200, axis=0)
    out = augment_batch(images, np.random.default_rng(9)).astype(int)
    rising = np.mean(out[:, 12, -1, 0] > out[:, 12, 0, 0])
    assert 0.35 < rising < 0.65


def test_batches_replay_the_augmentation_of_an_epoch_when_resumed():
    images = photos(count=12)
    labels = np.array([0, 1] * 6)
    run = ImageBatches(images, labels, np.arange(12), 4, shuffle=True, seed=2, augment=True)
    epoch0 = run[1][0]
    run.on_epoch_end()
    epoch1 = run[1][0]
    resumed = ImageBatches(images, labels, np.arange(12), 4, shuffle=True, seed=2,
                           augment=True, start_epoch=1)
    assert np.array_equal(resumed[1][0], epoch1) and not np.array_equal(epoch0, epoch1)
    plain = ImageBatches(images, labels, np.arange(12), 4)
    assert np.array_equal(plain[0][0], images[:4])


def test_old_on_off_values_of_augment_still_load():
    assert TrainConfig(augment=True).augment == "crop"
    assert TrainConfig(augment=False).augment == "none"
    assert TrainConfig.from_dict({"augment": False, "epochs": 3}).augment == "none"
    with pytest.raises(ValueError, match="augment must be one of crop, layers, none"):
        TrainConfig(augment="rotate")


def test_no_augment_flag_and_augment_choice_on_the_command_line(runner):
    result = runner.invoke(cli, ["train", "--no-augment", "--print-config"])
    assert_clean_exit(result, 0)
    assert 'augment = "none"\n' in result.output
    result = runner.invoke(cli, ["train", "--augment", "layers", "--print-config"])
    assert 'augment = "layers"\n' in result.output
    result = runner.invoke(cli, ["train", "--print-config"])
    assert 'augment = "crop"\n' in result.output and 'budget = "0"\n' in result.output


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600),
                                           ("1h30m", 5400), ("45", 45), ("2.5m", 150),
                                           (" 10 s", 10), (0, 0)])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5 m 3", "-3s", "1h30", "five minutes"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_print_as_they_are_typed():
    assert [format_duration(s) for s in (0, 90, 300, 5400, 3600, 12.5)] == \
        ["0", "90s", "5m", "1h30m", "1h", "12.5s"]


def test_budget_option_takes_a_duration_and_refuses_bad_text(runner):
    result = runner.invoke(cli, ["train", "--budget", "5m", "--print-config"])
    assert_clean_exit(result, 0)
    assert 'budget = "5m"\n' in result.output
    result = runner.invoke(cli, ["train", "--budget", "5 minutes"])
    assert_clean_exit(result, 2)
    assert "Invalid value for '--budget': a duration is a number with s, m or h" in \
        result.output


def test_mixup_blends_photos_and_labels_by_the_same_share():
    images = np.stack([np.full((4, 4, 3), 0, np.uint8), np.full((4, 4, 3), 200, np.uint8)])
    labels = np.array([[0.0], [1.0]], dtype=np.float32)
    mixed, soft = mix_batch(images, labels, 0.4, np.random.default_rng(3))
    assert mixed.dtype == np.uint8 and soft.dtype == np.float32
    for number in range(2):
        # The photo's own share is at least half, and its label moves by the same share.
        own = 1 - abs(float(mixed[number, 0, 0, 0]) / 200 - labels[number, 0])
        assert not np.array_equal(mixed[number], images[number])  # this seed mixes both
        assert 0.5 <= own < 1
        assert soft[number, 0] == pytest.approx(
            own * labels[number, 0] + (1 - own) * (1 - labels[number, 0]), abs=0.01)
        assert np.all(mixed[number] == mixed[number, 0, 0, 0])  # one share per photo


def test_mixup_in_batches_is_seeded_and_keeps_each_photo_mostly_itself():
    images = photos(count=16)
    labels = np.array([0, 1] * 8)
    batches = ImageBatches(images, labels, np.arange(16), 16, seed=4, mixup=0.4)
    x, y = batches[0]
    again_x, again_y = ImageBatches(images, labels, np.arange(16), 16, seed=4, mixup=0.4)[0]
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    assert not np.array_equal(x, images) and np.all((y >= 0) & (y <= 1))
    # Each photo keeps at least half of itself, so its label stays on its own side of 0.5.
    assert np.all(np.abs(y[:, 0] - labels) <= 0.5)
    assert np.any((y[:, 0] > 0) & (y[:, 0] < 1))  # some labels are soft
    with pytest.raises(ValueError, match="mixup must be at least 0, got -1"):
        ImageBatches(images, labels, np.arange(16), 4, mixup=-1)


def test_accuracy_counts_soft_labels_for_their_main_class():
    from catsdogs.train import rounded_binary_accuracy

    y_true = np.array([[0.8], [0.3], [1.0], [0.0]], dtype=np.float32)
    y_pred = np.array([[0.9], [0.2], [0.4], [0.6]], dtype=np.float32)
    assert np.asarray(rounded_binary_accuracy(y_true, y_pred)).mean() == pytest.approx(0.5)
