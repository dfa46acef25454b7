"""Property-based tests of the photo loader: whatever bytes it is given, it returns a
(size, size, 3) uint8 image or raises ImageError, never anything else, in bounded time; and
an image whose header declares too many pixels is refused before anything is decoded.

Inputs are random bytes and mutations (bit flips, overwritten, inserted and deleted runs,
truncation, header size fields rewritten) of small valid JPEG, PNG, WebP, BMP, TIFF and GIF
files. Runs are derandomized (the same examples every time) so CI is repeatable.
"""

from __future__ import annotations

import struct
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import data_prep.images as images
from data_prep.images import MAX_PIXELS, MAX_SIDE, ImageError, photo_from_bytes

FUZZ_EXAMPLES = 1000
"""Examples per property below (three properties: random bytes, mutated files, bombs)."""
SECONDS_PER_EXAMPLE = 10.0
"""No single input may take longer than this to accept or refuse (each takes about a
millisecond; the margin is for a loaded CI machine, the bound is for hangs)."""
SIZE = 16

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # timing is checked in check_loader, with a margin for loaded machines
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (0, 0), 2)
    alpha = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    seeds = {}
    for name, image, ext, params in [
        ("jpeg", photo, ".jpg", []),
        ("jpeg-progressive", photo, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        ("png", photo, ".png", []),
        ("png-alpha", alpha, ".png", []),
        ("png-16bit", photo.astype(np.uint16) * 257, ".png", []),
        ("webp-lossy", photo, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        ("webp-lossless", alpha, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        ("bmp", photo, ".bmp", []),
        ("tiff", photo, ".tiff", []),
        ("gif", photo, ".gif", []),
    ]:
        ok, buffer = cv2.imencode(ext, image, params)
        assert ok, name
        seeds[name] = buffer.tobytes()
    return seeds


SEEDS = _seed_files()


def check_loader(data: bytes) -> None:
    """The property: an image of the right shape, or ImageError; nothing else; quickly."""
    started = time.perf_counter()
    try:
        pixels, width, height = photo_from_bytes(data, SIZE)
    except ImageError as error:
        assert error.reason  # a short phrase for skipped.csv
        event(f"refused: {error.reason}")
    else:
        event("accepted")
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
        assert width >= images.MIN_SIDE and height >= images.MIN_SIDE
    assert time.perf_counter() - started < SECONDS_PER_EXAMPLE


def test_seed_files_are_all_accepted():
    for name, data in SEEDS.items():
        pixels, width, height = photo_from_bytes(data, SIZE)
        assert (width, height) == (32, 24), name


@FUZZ_SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check_loader(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate",
                                     "header"]))
        # Past the 12-byte format signature (the "header" mutation reaches those bytes).
        where = draw(st.integers(min(12, max(0, len(data) - 1)), max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            data[where : where + len(run)] = run
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[where:]
        else:  # rewrite a 16-bit field in the first 40 bytes, where sizes live
            offset = draw(st.integers(0, 38))
            if offset + 2 <= len(data):
                data[offset : offset + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


@pytest.mark.slow
@FUZZ_SETTINGS
@given(mutated())
def test_mutated_image_files(data):
    check_loader(data)


def _declaring(kind: str, width: int, height: int) -> bytes:
    """A seed file of ``kind`` whose header is rewritten to declare width×height."""
    data = bytearray(SEEDS[kind])
    if kind == "jpeg":
        i = 2
        while data[i + 1] != 0xC0:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
        struct.pack_into(">HH", data, i + 5, height, width)
    elif kind == "png":
        struct.pack_into(">II", data, 16, width, height)
    elif kind == "gif":
        struct.pack_into("<HH", data, 6, width, height)
    elif kind == "bmp":
        struct.pack_into("<ii", data, 18, width, height)
    elif kind == "webp-lossless":  # VP8L: 14 bits each for width-1 and height-1
        bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
        struct.pack_into("<I", data, 21, bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


@st.composite
def bomb(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["jpeg", "png", "gif", "bmp", "webp-lossless"]))
    limit = {"jpeg": 0xFFFF, "gif": 0xFFFF, "webp-lossless": 1 << 14}.get(kind, 2**31 - 1)
    side = st.integers(1, limit)
    width, height = draw(side), draw(side)
    if width <= MAX_SIDE and height <= MAX_SIDE and width * height <= MAX_PIXELS:
        width = draw(st.integers(min(MAX_SIDE + 1, limit), limit))
        if width * height <= MAX_PIXELS:
            height = min(limit, MAX_PIXELS // width + 1)
    return _declaring(kind, width, height)


@pytest.mark.slow
@FUZZ_SETTINGS
@given(data=bomb())
def test_bombs_are_refused_from_the_header_without_decoding(data, monkeypatch_module):
    with pytest.raises(ImageError) as caught:
        photo_from_bytes(data, SIZE)
    assert caught.value.reason == "too large"


@pytest.fixture(scope="module")
def monkeypatch_module():
    """cv2.imdecode replaced by a function that fails the test: nothing may be decoded."""
    patch = pytest.MonkeyPatch()

    def no_decoding(*args: object) -> None:
        raise AssertionError("a bomb reached the decoder")

    patch.setattr(images.cv2, "imdecode", no_decoding)
    yield patch
    patch.undo()
