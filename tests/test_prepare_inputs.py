"""prepare on the folders users really have: every awkward kind of file, one test each.

Each usable image is kept, each unusable one lands in skipped.csv with a reason, nothing
crashes. The files are made here with numpy + cv2 (EXIF blocks are written in by hand).
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from catsdogs.cli import cli
from data_prep import ImageError, load_image, prepare
from data_prep.images import (
    MAX_PIXELS,
    MAX_SIDE,
    decode,
    exif_orientation,
    load_photo,
    read_header,
    reduction_for,
)
from tests.helpers import assert_clean_exit, make_photo, write_photos

RED_BGR = (0, 0, 255)


def encode(image: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok, ext
    return buffer.tobytes()


def solid(height: int, width: int, bgr: tuple[int, int, int] = RED_BGR) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = bgr
    return image


def exif_block(orientation: int) -> bytes:
    """A TIFF-structured EXIF block holding one IFD entry: Orientation (tag 274, SHORT)."""
    return (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 274, 3, 1, orientation, 0) + struct.pack(">I", 0))


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment that gives its orientation."""
    payload = b"Exif\x00\x00" + exif_block(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_with_orientation(png: bytes, orientation: int, prefix: bytes = b"") -> bytes:
    """The PNG with an ``eXIf`` chunk right after IHDR (8 + 25 bytes)."""
    return png[:33] + png_chunk(b"eXIf", prefix + exif_block(orientation)) + png[33:]


def webp_with_orientation(webp: bytes, orientation: int) -> bytes:
    """A simple-format WebP turned extended: a VP8X chunk flagging EXIF, the image chunk,
    then an ``EXIF`` chunk."""
    width, height = read_header(webp).width, read_header(webp).height
    vp8x = (bytes([0x08, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little"))
    exif = exif_block(orientation)
    chunks = (b"VP8X" + struct.pack("<I", 10) + vp8x + webp[12:]
              + b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\x00" * (len(exif) & 1))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def tiff_with_orientation(tiff: bytes, orientation: int) -> bytes:
    """The TIFF with an Orientation entry (tag 274) in its first IFD: the IFD is copied to
    the end of the file with the entry added, and the header points at the copy."""
    order = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    entries = [tiff[offset + 2 + 12 * n : offset + 14 + 12 * n] for n in range(count)]
    (next_ifd,) = struct.unpack_from(order + "I", tiff, offset + 2 + 12 * count)
    entries = [e for e in entries if struct.unpack_from(order + "H", e)[0] != 274]
    entries.append(struct.pack(order + "HHIHH", 274, 3, 1, orientation, 0))
    entries.sort(key=lambda e: struct.unpack_from(order + "H", e)[0])
    body = tiff + b"\x00" * (len(tiff) & 1)  # an IFD starts on a word boundary
    ifd = (struct.pack(order + "H", len(entries)) + b"".join(entries)
           + struct.pack(order + "I", next_ifd))
    return body[:4] + struct.pack(order + "I", len(body)) + body[8:] + ifd


def upright_reference(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF specification's meaning of each orientation, with OpenCV's own functions."""
    turned = {
        1: lambda a: a,
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
        4: lambda a: cv2.flip(a, 0),
        5: cv2.transpose,
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }[orientation]
    return turned(stored)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png_bomb(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares width×height pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the width and height in its frame header (SOF) replaced."""
    data = bytearray(jpeg)
    i = 2
    while True:
        marker = data[i + 1]
        length = struct.unpack_from(">H", data, i + 2)[0]
        if 0xC0 <= marker <= 0xC2:
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length


@pytest.fixture
def mixed(tiny_dataset: Path) -> Path:
    """The tiny dataset plus one file of (almost) every awkward kind."""
    cats, dogs = tiny_dataset / "cats", tiny_dataset / "dogs"
    rng = np.random.default_rng(5)
    good = (dogs / "dog_0.jpg").read_bytes()
    (cats / "zero.jpg").write_bytes(b"")
    (dogs / "cut.jpg").write_bytes(good[: len(good) // 2])
    (cats / "notes.jpg").write_text("this is not a photo\n")
    (cats / "noise.png").write_bytes(rng.bytes(3000))
    (cats / "png named.jpg").write_bytes(encode(make_photo("cat", rng), ".png"))
    (dogs / "no_extension").write_bytes(encode(make_photo("dog", rng), ".jpg"))
    (dogs / "LOUD.JPG").write_bytes(encode(make_photo("dog", rng), ".jpg"))
    (dogs / "long.JPEG").write_bytes(encode(make_photo("dog", rng), ".jpg"))
    (cats / "odd.Png").write_bytes(encode(make_photo("cat", rng), ".png"))
    (cats / "bomb.png").write_bytes(png_bomb(50_000, 50_000))
    (cats / "pixel.gif").write_bytes(encode(solid(1, 1), ".gif"))
    (cats / "chat noir é.webp").write_bytes(encode(make_photo("cat", rng), ".webp"))
    (dogs / "犬 1.bmp").write_bytes(encode(make_photo("dog", rng), ".bmp"))
    (dogs / "scan.tiff").write_bytes(encode(make_photo("dog", rng), ".tiff"))
    (cats / "anim.gif").write_bytes(encode(make_photo("cat", rng), ".gif"))
    (cats / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(40))
    (cats / "copy of cat_0.jpg").write_bytes((cats / "cat_0.jpg").read_bytes())
    (dogs / "confused.jpg").write_bytes((cats / "cat_1.jpg").read_bytes())
    for clutter in (".DS_Store", "Thumbs.db", "._cat_2.jpg", "desktop.ini"):
        (cats / clutter).write_bytes(b"\x00\x05\x16\x07clutter")
    return tiny_dataset


def test_mixed_folder_keeps_every_usable_image_and_skips_the_rest(mixed, tmp_path):
    out = tmp_path / "out"
    result = prepare(mixed, out, size=16)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons == {
        "zero.jpg": "empty file",
        "cut.jpg": "truncated JPEG",
        "notes.jpg": "not an image",
        "noise.png": "not an image",
        "bomb.png": "too large",
        "pixel.gif": "too small",
        "phone.heic": "unsupported format",
        "copy of cat_0.jpg": "duplicate",
        "confused.jpg": "label conflict",
        "cat_1.jpg": "label conflict",
    }
    # 12 + 12 photos, minus cat_1 (conflict), plus 6 usable awkward cats and 5 dogs.
    assert result.counts == {"cats": 11 + 4, "dogs": 12 + 5}
    manifest = pd.read_csv(out / "manifest.csv")
    names = set(manifest["path"].map(lambda p: Path(p).name))
    for kept in ("png named.jpg", "no_extension", "LOUD.JPG", "long.JPEG", "odd.Png",
                 "chat noir é.webp", "犬 1.bmp", "scan.tiff", "anim.gif"):
        assert kept in names
    assert not any(name.startswith(".") or name in ("Thumbs.db", "desktop.ini")
                   for name in names | set(reasons))
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["path", "reason", "detail"]
    assert len(skipped) == len(reasons)
    images = np.load(out / "images.npy")
    assert images.shape == (len(manifest), 16, 16, 3)
    # Every kept image is a real photo of its class: cats are red-dominant, dogs blue.
    red_minus_blue = images[..., 0].mean(axis=(1, 2)) - images[..., 2].mean(axis=(1, 2))
    is_cat = (manifest["class_name"] == "cats").to_numpy()
    assert (red_minus_blue[is_cat] > 50).all() and (red_minus_blue[~is_cat] < -50).all()


def test_summary_counts_skips_by_reason(runner, mixed, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["prepare", str(mixed), "--out", str(out), "--size", "16"])
    assert_clean_exit(result, 0)
    summary = next(line for line in result.output.splitlines() if line.startswith("Skipped"))
    assert summary.startswith("Skipped 10: ")
    for part in ("2 label conflict", "2 not an image", "1 empty file", "1 truncated JPEG",
                 "1 too large", "1 too small", "1 unsupported format", "1 duplicate"):
        assert part in summary
    assert "... and 5 more" in result.output


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp", ".tiff", ".gif", ".jpg"])
def test_formats_decode_to_rgb(tmp_path, ext):
    image = solid(32, 40, (30, 120, 220))  # BGR
    path = tmp_path / f"photo{ext}"
    path.write_bytes(encode(image, ext))
    pixels, width, height = load_photo(path, 16)
    assert (width, height) == (40, 32)
    # RGB order; GIF is palette-quantised (dithered), the others near lossless.
    assert np.abs(pixels.astype(int) - [220, 120, 30]).max() <= (16 if ext == ".gif" else 8)


def test_content_decides_not_the_name(tmp_path):
    png = tmp_path / "really_a_png.jpg"
    png.write_bytes(encode(solid(20, 20), ".png"))
    jpeg = tmp_path / "no_extension"
    jpeg.write_bytes(encode(solid(20, 20), ".jpg"))
    assert read_header(png.read_bytes()).kind == "png"
    assert load_image(png, 8)[0, 0].tolist() == [255, 0, 0]
    assert load_image(jpeg, 8)[0, 0, 0] > 240


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(encode(np.full((20, 20), 77, np.uint8), ".png"))
    image = load_image(path, 8)
    assert image.shape == (8, 8, 3) and (image == 77).all()


def test_sixteen_bit_becomes_eight_bit(tmp_path):
    deep = np.zeros((20, 20, 3), np.uint16)
    deep[:, :10] = 65535
    deep[:, 10:] = 32896  # 128 * 257
    path = tmp_path / "deep.png"
    path.write_bytes(encode(deep, ".png"))
    image = load_image(path, 20)
    assert image.dtype == np.uint8
    assert (image[:, :9] == 255).all() and (image[:, 11:] == 128).all()
    grey = tmp_path / "deep_grey.tiff"
    grey.write_bytes(encode(np.full((20, 20), 65535, np.uint16), ".tiff"))
    assert (load_image(grey, 8) == 255).all()


@pytest.mark.parametrize("ext", [".png", ".webp"])
def test_alpha_is_composited_over_white(tmp_path, ext):
    image = np.zeros((20, 20, 4), np.uint8)
    image[..., 1] = 200  # green where opaque
    image[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    image[10:, :, 3] = 0
    path = tmp_path / f"sticker{ext}"
    path.write_bytes(encode(image, ext, [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp"
                           else []))
    pixels = load_image(path, 20)
    assert pixels[2, 5].tolist() == [0, 200, 0]
    assert pixels[17, 5].tolist() == [255, 255, 255]


def test_half_transparent_alpha_blends(tmp_path):
    image = np.zeros((10, 10, 4), np.uint8)
    image[..., 3] = 128  # black at half opacity over white: grey 127
    path = tmp_path / "half.png"
    path.write_bytes(encode(image, ".png"))
    assert (np.abs(load_image(path, 10).astype(int) - 127) <= 1).all()


@pytest.mark.parametrize("size", [8, 60])  # 8: decoded at 1/8 scale; 60: full decode
def test_exif_orientation_is_applied(tmp_path, size):
    # Stored 80 wide, 40 high, red on the left half; orientation 6 = turn 90° clockwise
    # to view, so the upright photo is 40 wide, 80 high, red on top.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = RED_BGR
    path = tmp_path / "phone.jpg"
    path.write_bytes(with_exif_orientation(encode(stored, ".jpg"), 6))
    assert reduction_for(80, 40, size) == (4 if size == 8 else 1)
    pixels, width, height = load_photo(path, size, "pad")
    assert (width, height) == (40, 80)
    top = pixels[: size // 4, size // 2]
    bottom = pixels[-size // 4 :, size // 2]
    assert top[:, 0].min() > 200 and bottom[:, 0].max() < 60


def quadrants() -> np.ndarray:
    """16 high, 24 wide, BGR: red, green / blue, white quadrants (no two orientations of it
    look the same)."""
    image = np.zeros((16, 24, 3), np.uint8)
    image[:8, :12], image[:8, 12:] = RED_BGR, (0, 255, 0)
    image[8:, :12], image[8:, 12:] = (255, 0, 0), (255, 255, 255)
    return image


ORIENTED = {
    "jpeg": lambda image, o: with_exif_orientation(
        encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]), o),
    "png": lambda image, o: png_with_orientation(encode(image, ".png"), o),
    "webp": lambda image, o: webp_with_orientation(
        encode(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), o),
    "tiff": lambda image, o: tiff_with_orientation(encode(image, ".tiff"), o),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", sorted(ORIENTED))
def test_every_format_honours_exif_orientation(kind, orientation):
    """A photo that asks to be turned (a phone's PNG screenshot, a WebP from a messenger, a
    scanner's TIFF) is turned upright as a JPEG is, and its width and height are upright."""
    stored = quadrants()
    data = ORIENTED[kind](stored, orientation)
    assert read_header(data).kind == kind
    image, width, height = decode(data)
    expected = cv2.cvtColor(upright_reference(stored, orientation), cv2.COLOR_BGR2RGB)
    assert (height, width) == expected.shape[:2] == image.shape[:2]
    if kind == "jpeg":  # lossy: compare the middle of each quadrant
        rows, columns = expected.shape[0] // 4, expected.shape[1] // 4
        for row in (rows, 3 * rows):
            for column in (columns, 3 * columns):
                difference = image[row, column].astype(int) - expected[row, column]
                assert np.abs(difference).max() < 40, (row, column)
    else:
        np.testing.assert_array_equal(image, expected)


def test_exif_orientation_of_png_and_webp_blocks():
    png = encode(quadrants(), ".png")
    assert exif_orientation(png, "png") == 1
    assert exif_orientation(png_with_orientation(png, 8), "png") == 8
    # some writers keep the "Exif\0\0" prefix of the JPEG segment
    assert exif_orientation(png_with_orientation(png, 6, prefix=b"Exif\x00\x00"), "png") == 6
    # out of range, a short block, a block cut in the middle: as stored
    assert exif_orientation(png_with_orientation(png, 9), "png") == 1
    assert exif_orientation(png[:33] + png_chunk(b"eXIf", b"MM") + png[33:], "png") == 1
    assert exif_orientation(png[:33] + png_chunk(b"eXIf", exif_block(6)[:12]) + png[33:],
                            "png") == 1
    webp = encode(quadrants(), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert exif_orientation(webp, "webp") == 1
    assert exif_orientation(webp_with_orientation(webp, 3), "webp") == 3


def test_an_oriented_png_with_alpha_is_turned_and_composited(tmp_path):
    image = np.zeros((10, 20, 4), np.uint8)
    image[:, :10] = (0, 0, 255, 255)  # opaque red on the left, transparent on the right
    path = tmp_path / "sticker.png"
    path.write_bytes(png_with_orientation(encode(image, ".png"), 6))
    pixels, width, height = load_photo(path, 20, "pad")
    assert (width, height) == (10, 20)
    assert pixels[3, 10].tolist() == [255, 0, 0]  # red on top
    assert pixels[16, 10].tolist() == [255, 255, 255]  # white below


def test_reduced_jpeg_decode_never_upsamples_and_stays_close(tmp_path):
    rng = np.random.default_rng(3)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (400, 600, 3), dtype=np.uint8), (0, 0), 6)
    data = encode(smooth, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    assert reduction_for(600, 400, 128) == 2  # 300x200 still covers 128x128; 150x100 not
    assert reduction_for(600, 400, 50) == 8
    assert reduction_for(600, 400, 201) == 1
    assert reduction_for(600, 400, 128, "crop") == 2  # short side 200 >= 128
    assert reduction_for(600, 400, 128, "pad") == 4  # needs 128x85: 150x100 covers it
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    reference = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)
    pixels, width, height = load_photo(path, 128)
    assert (width, height) == (600, 400)
    assert np.abs(pixels.astype(int) - reference).mean() < 3


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    small = encode(solid(16, 16), ".jpg")
    bombs = {
        "bomb.jpg": jpeg_with_size(small, 60_000, 60_000),
        "wide.jpg": jpeg_with_size(small, MAX_SIDE + 1, 16),
        "bomb.png": png_bomb(40_000, 40_000),
        "many.png": png_bomb(20_000, MAX_PIXELS // 20_000 + 1),
        "bomb.gif": b"GIF89a" + struct.pack("<HH", 65_535, 65_535) + bytes(20),
        "bomb.bmp": (b"BM" + bytes(12) + struct.pack("<Iii", 40, 100_000, 100_000)
                     + bytes(30)),
        "bomb.webp": (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10)
                      + bytes(4) + (40_000).to_bytes(3, "little") * 2),
        "bomb.tiff": (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
                      + struct.pack("<HHII", 256, 4, 1, 90_000)
                      + struct.pack("<HHII", 257, 4, 1, 90_000) + bytes(4)),
    }
    for name, data in bombs.items():
        path = tmp_path / name
        path.write_bytes(data)
        started = time.perf_counter()
        with pytest.raises(ImageError, match="too large") as caught:
            load_image(path, 16)
        assert time.perf_counter() - started < 0.5, name
        assert caught.value.reason == "too large"


def test_files_over_the_byte_limit_are_not_read(tmp_path, monkeypatch):
    import data_prep.images as images

    path = tmp_path / "big.jpg"
    path.write_bytes(encode(solid(40, 40), ".jpg"))
    assert images.read_bytes(path) == path.read_bytes()
    monkeypatch.setattr(images, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ImageError, match="too large"):
        images.read_bytes(path)


def test_reading_a_photo_allocates_about_its_size(tmp_path):
    """A read sized for the 1 GiB limit made Python allocate (and free) a gigabyte for every
    photo: slower than the decode of a small JPEG, and serialized parallel readers."""
    import tracemalloc

    from data_prep.images import read_bytes

    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(solid(64, 64), ".jpg"))
    tracemalloc.start()
    try:
        data = read_bytes(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes()
    assert peak < 1 << 20, f"reading a {len(data)}-byte file allocated {peak} bytes"


def test_opencv_exceptions_become_image_errors(tmp_path, monkeypatch):
    import data_prep.images as images

    def boom(*args):
        raise cv2.error("simulated OpenCV failure")

    path = tmp_path / "x.png"
    path.write_bytes(encode(solid(20, 20), ".png"))
    monkeypatch.setattr(images.cv2, "imdecode", boom)
    with pytest.raises(ImageError, match="undecodable image"):
        load_image(path, 8)


def test_corrupt_data_behind_a_good_header_is_skipped(tmp_path):
    data = bytearray(encode(make_photo("cat", np.random.default_rng(0), size=40), ".png"))
    data[60:200] = bytes(140)  # smash the compressed pixel data, keep the header
    path = tmp_path / "smashed.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="undecodable image"):
        load_image(path, 16)


@pytest.mark.parametrize(("side", "kept"), [(1, False), (7, False), (8, True)])
def test_tiny_images_under_eight_pixels_are_skipped(tmp_path, side, kept):
    path = tmp_path / "small.png"
    path.write_bytes(encode(solid(side, side), ".png"))
    if kept:
        assert load_image(path, 16).shape == (16, 16, 3)  # enlarged with INTER_CUBIC
    else:
        with pytest.raises(ImageError, match="too small"):
            load_image(path, 16)


def test_unsupported_formats_are_named(tmp_path):
    for name, data in {"a.heic": b"\x00\x00\x00\x18ftypheic" + bytes(16),
                       "b.avif": b"\x00\x00\x00\x1cftypavif" + bytes(16)}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as caught:
            load_image(tmp_path / name, 16)
        assert caught.value.reason == "unsupported format"
        assert caught.value.detail == name[-4:]


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges")
def test_symlinks_followed_and_loops_survived(tmp_path):
    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", 3, seed=1)
    write_photos(root / "dogs", "dog", 3, seed=2)
    outside = write_photos(tmp_path / "elsewhere", "dog", 2, seed=9)
    (root / "dogs" / "linked.jpg").symlink_to(outside[0])
    (root / "dogs" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "cats" / "loop").symlink_to(root / "cats", target_is_directory=True)
    (root / "dogs" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    result = prepare(root, tmp_path / "out", size=16)
    # 3 dogs + the linked file + 2 in the linked folder; the linked file is also in that
    # folder (same bytes twice): kept once, reported as a duplicate.
    assert result.counts == {"cats": 3, "dogs": 5}
    assert [s.reason for s in result.skipped] == ["duplicate"]


def test_non_ascii_and_spaces_in_every_part_of_the_path(tmp_path):
    root = tmp_path / "mes photos été"
    write_photos(root / "chats noirs", "cat", 3, seed=1)
    write_photos(root / "犬 たち", "dog", 3, seed=2)
    out = tmp_path / "sortie préparée"
    result = prepare(root, out, size=16)
    assert result.classes == ["chats noirs", "犬 たち"]
    manifest = pd.read_csv(out / "manifest.csv")
    assert all(Path(p).is_file() for p in manifest["path"])


def test_names_that_are_not_utf8_are_kept(tmp_path, runner):
    """Names in Latin-1 (old Windows tools, zip files): the photos are kept, their names
    written to manifest.csv with the stray bytes as \\xNN, and a class folder named so works
    too. Before, one such name made the whole prepare fail."""
    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", 3, seed=1)
    write_photos(root / "dogs", "dog", 3, seed=2)
    # (renamed afterwards: OpenCV's imwrite crashes on such a name; catsdogs never hands
    # OpenCV a path, only bytes it has read)
    os.rename(root / "dogs", os.fsencode(root) + b"/chiens \xe9t\xe9")  # Latin-1 "été"
    odd = Path(os.fsdecode(os.fsencode(root / "cats") + b"/caf\xe9.jpg"))
    odd.write_bytes(encode(make_photo("cat", np.random.default_rng(9)), ".jpg"))
    out = tmp_path / "out"
    result = runner.invoke(cli, ["prepare", str(root), "--out", str(out), "--size", "16"])
    assert result.exit_code == 0, result.output
    assert "Prepared 7 photos" in result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["class_name"].unique()) == ["cats", "chiens \\xe9t\\xe9"]
    assert str(root / "cats" / "caf\\xe9.jpg") in set(manifest["path"])
    again = runner.invoke(cli, ["prepare", str(root), "--out", str(out), "--size", "16"])
    assert "reused" in again.output  # the fingerprint sees the same names


def test_workers_do_not_change_the_output(mixed, tmp_path):
    # A PNG whose header is fine but whose data is not: it fails in the decode pass and
    # leaves a hole that has to be closed, whatever the worker count.
    data = bytearray(encode(make_photo("cat", np.random.default_rng(1), size=40), ".png"))
    data[60:200] = bytes(140)
    (mixed / "cats" / "cat_00_smashed.png").write_bytes(bytes(data))
    outputs = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}"
        result = prepare(mixed, out, size=16, workers=workers)
        assert result.workers == workers
        outputs[workers] = (np.load(out / "images.npy"),
                            (out / "manifest.csv").read_text(),
                            (out / "skipped.csv").read_text())
        assert "cat_00_smashed.png,undecodable image" in outputs[workers][2]
    for workers in (2, 3):
        assert np.array_equal(outputs[1][0], outputs[workers][0])
        assert outputs[1][1:] == outputs[workers][1:]
    # And the rows are the photos themselves, in manifest order.
    manifest = pd.read_csv(tmp_path / "out2" / "manifest.csv")
    for row in manifest.itertuples():
        assert np.array_equal(outputs[2][0][row.index], load_image(row.path, 16))


@pytest.fixture
def same_size_pair(tiny_dataset: Path) -> Path:
    """``tiny_dataset`` with two different BMP photos of one byte size added: only files
    whose byte size another file shares are hashed, so these two are always checked."""
    rng = np.random.default_rng(5)
    for name in ("twin_a.bmp", "twin_b.bmp"):
        assert cv2.imwrite(str(tiny_dataset / "cats" / name), make_photo("cat", rng))
    sizes = {(tiny_dataset / "cats" / name).stat().st_size for name in ("twin_a.bmp",
                                                                       "twin_b.bmp")}
    assert len(sizes) == 1
    return tiny_dataset


def test_progress_is_reported_through_a_callback(same_size_pair, tmp_path):
    calls: list[tuple[str, int, int]] = []
    prepare(same_size_pair, tmp_path / "out", size=16, workers=2,
            progress=lambda stage, done, total: calls.append((stage, done, total)))
    resizing = [c for c in calls if c[0] == "resizing"]
    assert [c[1] for c in resizing] == list(range(1, 27))
    assert {c[2] for c in resizing} == {26}
    # "checking" counts the files hashed for duplicates: at least the two of one size.
    checking = [c for c in calls if c[0] == "checking"]
    total = len(checking)
    assert total >= 2
    assert [c[1] for c in checking] == list(range(1, total + 1))
    assert {c[2] for c in checking} == {total}
    assert calls.index(checking[-1]) < calls.index(resizing[0])


def test_progress_bar_only_on_a_terminal(runner, tiny_dataset, tmp_path, capsys):
    from catsdogs.cli import ProgressLine

    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(tmp_path / "a"),
                                 "--size", "16", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "2 workers" in result.output
    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(tmp_path / "b"),
                                 "--size", "16", "--quiet", "-j", "1"])
    assert result.exit_code == 0 and "1 worker)" in result.output
    assert runner.invoke(cli, ["prepare", str(tiny_dataset), "--workers", "0"]).exit_code == 2
    bar = ProgressLine()
    for done in range(1, 11):
        bar("resizing", done, 10)
    bar.close()
    drawn = capsys.readouterr().err
    assert "resizing" in drawn and "10/10" in drawn and "files/s" in drawn and "ETA" in drawn


def test_source_is_never_written_even_with_awkward_files(mixed, tmp_path):
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in mixed.rglob("*")}
    prepare(mixed, tmp_path / "out", size=16, workers=2)
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in mixed.rglob("*")}
    assert before == after
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unreadable_file_is_skipped(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root can read any file")
    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", 2, seed=1)
    write_photos(root / "dogs", "dog", 2, seed=2)
    locked = root / "cats" / "locked.jpg"
    locked.write_bytes((root / "dogs" / "dog_0.jpg").read_bytes()[::-1])
    locked.chmod(0)
    try:
        result = prepare(root, tmp_path / "out", size=16)
    finally:
        locked.chmod(0o644)
    assert [s.reason for s in result.skipped] == ["unreadable file"]


def test_jpeg_endings(tmp_path):
    """Data after the end-of-image marker (some cameras append some) is fine; an EXIF
    thumbnail's end marker does not make a cut-off photo look complete."""
    photo = encode(make_photo("dog", np.random.default_rng(2), size=40), ".jpg")
    (tmp_path / "trailer.jpg").write_bytes(photo + b"camera trailer" + bytes(100))
    assert load_image(tmp_path / "trailer.jpg", 16).shape == (16, 16, 3)
    thumbnail = encode(solid(8, 8), ".jpg")  # a complete JPEG, ending in FFD9
    payload = b"Exif\x00\x00" + thumbnail
    with_thumbnail = photo[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    with_thumbnail += photo[2:]
    (tmp_path / "cut.jpg").write_bytes(with_thumbnail[: len(with_thumbnail) - 200])
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_image(tmp_path / "cut.jpg", 16)


def test_corrupt_jpeg_data_with_an_end_marker_is_kept(tmp_path):
    """libjpeg recovers from damaged entropy-coded data (the "Corrupt JPEG data" warnings of
    Microsoft's PetImages): the photo is kept, as it decodes to a full image."""
    data = bytearray(encode(make_photo("cat", np.random.default_rng(3), size=64), ".jpg"))
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(40)
    (tmp_path / "damaged.jpg").write_bytes(bytes(data))
    assert load_image(tmp_path / "damaged.jpg", 16).shape == (16, 16, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_libjpeg_warnings_stay_off_the_terminal(tiny_dataset, tmp_path, capfd, workers):
    """libjpeg writes "Corrupt JPEG data: ..." straight to file descriptor 2 for photos it
    decodes fine; in the main process as in worker processes, prepare keeps that off the
    terminal (where it would break the progress bar) and keeps the photo."""
    good = encode(make_photo("cat", np.random.default_rng(3), size=64), ".jpg")
    middle = len(good) // 2
    noisy = good[:middle] + b"\xff\xd3" + good[middle:]  # a stray marker inside the scan
    (tiny_dataset / "cats" / "noisy.jpg").write_bytes(noisy)
    cv2.imdecode(np.frombuffer(noisy, np.uint8), cv2.IMREAD_COLOR)
    assert "Corrupt JPEG data" in capfd.readouterr().err  # the file does make libjpeg warn

    result = prepare(tiny_dataset, tmp_path / "out", size=16, workers=workers)
    assert "Corrupt JPEG data" not in capfd.readouterr().err
    assert result.counts == {"cats": 13, "dogs": 12} and result.skipped == []
    print("still here", file=sys.stderr)  # and file descriptor 2 works again afterwards
    os.write(2, b"and here\n")
    assert capfd.readouterr().err == "still here\nand here\n"


def test_default_worker_count_follows_cores_and_photo_count(tmp_path):
    from data_prep.prepare import PHOTOS_PER_WORKER, available_cores

    root = tmp_path / "photos"
    write_photos(root / "cats", "cat", PHOTOS_PER_WORKER, seed=1)
    write_photos(root / "dogs", "dog", PHOTOS_PER_WORKER + 6, seed=2)
    result = prepare(root, tmp_path / "out", size=8)
    assert result.workers == min(available_cores(), 2)
    assert sum(result.counts.values()) == 2 * PHOTOS_PER_WORKER + 6
    small = prepare(tmp_path / "photos", tmp_path / "out2", size=8, test_fraction=0.5)
    assert small.workers == result.workers  # same photos, same count
    few = tmp_path / "few"
    write_photos(few / "cats", "cat", 3, seed=1)
    write_photos(few / "dogs", "dog", 3, seed=2)
    assert prepare(few, tmp_path / "out3", size=8).workers == 1


def test_identical_junk_in_two_classes_is_junk_not_a_label_conflict(tiny_dataset, tmp_path):
    (tiny_dataset / "cats" / "readme.jpg").write_text("hello")
    (tiny_dataset / "dogs" / "readme.jpg").write_text("hello")
    good = (tiny_dataset / "cats" / "cat_0.jpg").read_bytes()
    (tiny_dataset / "cats" / "half.jpg").write_bytes(good[: len(good) // 2])
    (tiny_dataset / "dogs" / "half.jpg").write_bytes(good[: len(good) // 2])
    result = prepare(tiny_dataset, tmp_path / "out", size=16)
    assert result.skipped_by_reason == {"not an image": 2, "truncated JPEG": 2}
    assert result.counts == {"cats": 12, "dogs": 12}
