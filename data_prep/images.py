"""The one way a photo becomes model input: decode with OpenCV, RGB, resize to N×N, gray if
asked.

``prepare``, ``predict`` and ``evaluate`` all call :func:`load_image`, so a photo is turned
into exactly the same pixels whether it is being trained on or asked about.

What happens to a file, in order:

1. its first bytes name its format (JPEG, PNG, WebP, BMP, TIFF, GIF), whatever its extension;
2. its header gives its width and height, checked *before* anything is decoded: under
   ``MIN_SIDE`` on a side is "too small", over ``MAX_SIDE`` on a side or ``MAX_PIXELS`` in all
   is "too large" (a decompression bomb: a few kilobytes that would decode to gigabytes);
3. a JPEG must end with an end-of-image marker after its image data (libjpeg decodes a cut
   file with a grey bottom and only a warning); a JPEG at least 2×, 4× or 8× the target size
   is decoded at that reduced scale by libjpeg (``IMREAD_REDUCED_*``, several times faster)
   and then resized exactly; its EXIF orientation is applied;
4. other formats are decoded with all their channels and bits: grey becomes RGB, 16-bit
   becomes 8-bit, and an alpha channel is composited over **white** (how a viewer shows a
   transparent picture); their EXIF orientation is applied too (a PNG's ``eXIf`` chunk, a
   WebP's ``EXIF`` chunk, a TIFF's Orientation tag), so every format is turned upright as a
   JPEG is;
5. the RGB image is resized to N×N following the resize policy: ``INTER_AREA`` when
   shrinking 2× or more, ``INTER_LINEAR`` when shrinking less, ``INTER_CUBIC`` when enlarging;
6. for one channel (``channels=1``: a gray dataset, or a photo asked of a gray model) the
   N×N RGB image becomes gray, N×N×1 (``cv2.COLOR_RGB2GRAY``: 0.299 R + 0.587 G + 0.114 B).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# OpenCV's own guard against decompression bombs (default 2^30 pixels) is set to ours, as a
# second line of defence behind the header check below. Only set when the user has not.
MAX_PIXELS = 100_000_000
"""Largest photo accepted, in pixels (a 100-megapixel photo is 300 MB decoded)."""
MAX_SIDE = 30_000
"""Largest side accepted, in pixels."""
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

CHANNELS = (1, 3)
"""Channels of model input: 1 (gray) or 3 (RGB)."""

RESIZE_POLICIES = ("stretch", "crop", "pad")
"""How a non-square photo becomes square.

* ``stretch`` (default): resize width and height independently to N×N, as Keras'
  ``image_dataset_from_directory`` does; nothing is lost, shapes are distorted.
* ``crop``: scale the short side to N and cut the centre square; shapes kept, edges lost.
* ``pad``: scale the long side to N and pad the rest with black; shapes kept, pixels wasted.
"""

MIN_SIDE = 8
"""Photos smaller than this on either side carry no usable detail (icons, 1×1 tracking
pixels, spacer GIFs) and are skipped as "too small"."""

MAX_FILE_BYTES = 1 << 30
"""Files larger than this are not read at all ("too large")."""

REDUCTIONS = (8, 4, 2)
"""Scales libjpeg can decode a JPEG at directly (in the DCT domain)."""
_REDUCED_FLAG = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# IMREAD_REDUCED_COLOR_n is IMREAD_REDUCED_GRAYSCALE_n | IMREAD_COLOR (BGR); OpenCV 5 refuses
# IMREAD_COLOR together with IMREAD_COLOR_RGB, so the RGB variant is built from the grey one.

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


class ImageError(ValueError):
    """A file that cannot be used as a photo; ``reason`` is a short, stable phrase."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Header:
    """What a file's first bytes say: its format and its stored width and height."""

    kind: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, whatever its extension says."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _unsupported_format(data: bytes) -> str | None:
    """Image formats recognised only to name them in the skip reason."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "heic"
        if brand in (b"avif", b"avis"):
            return "avif"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return "bigtiff"
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return "jpeg2000"
    return None


def _jpeg_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, offset of the first start-of-scan) from a JPEG's marker segments."""
    size = None
    i = 2
    end = len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            raise ImageError("undecodable image", "jpeg: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise ImageError("undecodable image", "jpeg: bad segment length")
        if marker in _SOF_MARKERS and i + 9 <= end and size is None:
            height, width = struct.unpack_from(">HH", data, i + 5)
            size = (width, height)
        if marker == 0xDA:
            if size is None:
                raise ImageError("undecodable image", "jpeg: no frame header")
            return size[0], size[1], i
        i += 2 + length
    if size is None:
        raise ImageError("undecodable image", "jpeg: no frame header")
    raise ImageError("truncated JPEG", "no image data")


def _tiff_header(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    values: dict[int, int] = {}
    for n in range(count):
        tag, kind, _, raw = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * n)
        if tag in (256, 257):
            if kind == 3:
                values[tag] = struct.unpack_from(order + "H", raw)[0]
            elif kind == 4:
                values[tag] = struct.unpack_from(order + "I", raw)[0]
    return values[256], values[257]


def read_header(data: bytes) -> Header:
    """Format and stored size of an image from its header bytes, without decoding it.

    Raises :class:`ImageError`: "empty file", "not an image", "unsupported format",
    "undecodable image" (a header that makes no sense) or "truncated JPEG".
    """
    if not data:
        raise ImageError("empty file")
    kind = sniff_format(data)
    if kind is None:
        other = _unsupported_format(data)
        if other is not None:
            raise ImageError("unsupported format", other)
        raise ImageError("not an image")
    try:
        if kind == "jpeg":
            width, height, scan = _jpeg_header(data)
            # libjpeg decodes a cut-off JPEG with a grey bottom and only a warning: require the
            # end-of-image marker after the image data (not one inside an EXIF thumbnail).
            if data.rfind(b"\xff\xd9") < scan:
                raise ImageError("truncated JPEG")
        elif kind == "png":
            if data[12:16] != b"IHDR":
                raise ImageError("undecodable image", "png: no IHDR")
            width, height = struct.unpack_from(">II", data, 16)
        elif kind == "gif":
            width, height = struct.unpack_from("<HH", data, 6)
        elif kind == "bmp":
            (info_size,) = struct.unpack_from("<I", data, 14)
            if info_size == 12:
                width, height = struct.unpack_from("<HH", data, 18)
            else:
                width, height = struct.unpack_from("<ii", data, 18)
                width, height = abs(width), abs(height)
        elif kind == "webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                if data[23:26] != b"\x9d\x01\x2a":
                    raise ImageError("undecodable image", "webp: bad VP8 frame")
                width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
            elif chunk == b"VP8L":
                if data[20] != 0x2F:
                    raise ImageError("undecodable image", "webp: bad VP8L frame")
                (bits,) = struct.unpack_from("<I", data, 21)
                width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            elif chunk == b"VP8X":
                raw = data[24:30]
                if len(raw) < 6:
                    raise ImageError("undecodable image", "webp: short header")
                width = int.from_bytes(raw[:3], "little") + 1
                height = int.from_bytes(raw[3:], "little") + 1
            else:
                raise ImageError("undecodable image", "webp: unknown chunk")
        else:
            width, height = _tiff_header(data)
    except (struct.error, KeyError, IndexError):
        raise ImageError("undecodable image", f"{kind}: short or bad header") from None
    if width <= 0 or height <= 0:
        raise ImageError("undecodable image", f"{kind}: size {width}x{height}")
    return Header(kind, width, height)


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation (tag 274) of a TIFF-structured EXIF block: 1 (as stored) when it has
    none or cannot be read. Some writers keep JPEG's ``Exif\\0\\0`` prefix: it is skipped."""
    if tiff[:6] == b"Exif\x00\x00":
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (offset,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for n in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, offset + 2 + 12 * n)
            if tag == 274 and kind == 3:  # SHORT
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def _chunks(data: bytes, start: int, big_endian: bool) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk from ``start``: PNG's (big-endian length, type, body, CRC)
    or RIFF's (type, little-endian length, body padded to an even length)."""
    i = start
    while i + 8 <= len(data):
        if big_endian:
            (length,) = struct.unpack_from(">I", data, i)
            kind, body_at, next_at = data[i + 4 : i + 8], i + 8, i + 12 + length
        else:
            (length,) = struct.unpack_from("<I", data, i + 4)
            kind, body_at, next_at = data[i : i + 4], i + 8, i + 8 + length + (length & 1)
        yield kind, data[body_at : body_at + length]
        i = next_at


def exif_orientation(data: bytes, kind: str) -> int:
    """The EXIF orientation (1 to 8) a PNG or WebP file asks for; 1 for other formats: OpenCV
    applies a JPEG's itself (decoded in colour) and a TIFF's in its TIFF decoder, even with
    ``IMREAD_UNCHANGED``; BMP and GIF have none."""
    if kind == "png":
        for chunk, body in _chunks(data, 8, big_endian=True):
            if chunk == b"eXIf":
                return _tiff_orientation(body)
            if chunk == b"IEND":
                break
    elif kind == "webp":
        for chunk, body in _chunks(data, 12, big_endian=False):
            if chunk == b"EXIF":
                return _tiff_orientation(body)
    return 1


_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left to right
    3: lambda a: a[::-1, ::-1],  # turned 180°
    4: lambda a: a[::-1],  # mirrored top to bottom
    5: lambda a: a.swapaxes(0, 1),  # mirrored along the main diagonal
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],  # stored turned 90° anticlockwise: turn clockwise
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # mirrored along the other diagonal
    8: lambda a: a.swapaxes(0, 1)[::-1],  # stored turned 90° clockwise: turn anticlockwise
}


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as it is meant to be seen, given its EXIF orientation (1: as stored)."""
    turn = _UPRIGHT.get(orientation)
    return image if turn is None else np.ascontiguousarray(turn(image))


def check_size(header: Header) -> None:
    """Refuse photos too small to use or too large to decode safely (bombs), from the header."""
    width, height = header.width, header.height
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(
            "too large",
            f"{width}x{height} declared, limit {MAX_SIDE} px a side and "
            f"{MAX_PIXELS // 1_000_000} megapixels",
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError("too small", f"{width}x{height}, need {MIN_SIDE}x{MIN_SIDE}")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the file at ``path``, or :class:`ImageError` ("too large", "unreadable
    file").

    Reads the size the file reports plus one byte: a read sized for the limit would have
    Python map and unmap :data:`MAX_FILE_BYTES` of memory for every photo, which costs more
    than decoding a small JPEG (and, in threads, makes the readers wait on each other). A
    file that grows while it is read is read on to its end, within the limit.
    """
    too_large = ImageError("too large", f"file over {MAX_FILE_BYTES >> 20} MB")
    try:
        with open(path, "rb") as handle:  # buffered: read(n) goes on after a short read
            expected = os.fstat(handle.fileno()).st_size
            if expected > MAX_FILE_BYTES:
                raise too_large
            data = handle.read(expected + 1)
            if len(data) > expected:  # it grew since fstat
                data += handle.read(MAX_FILE_BYTES + 1 - len(data))
            if len(data) > MAX_FILE_BYTES:
                raise too_large
            return data
    except OSError as error:
        raise ImageError("unreadable file", error.strerror or str(error)) from None


def target_shape(width: int, height: int, size: int, policy: str) -> tuple[int, int]:
    """(width, height) a ``width``×``height`` photo is resized to before cropping/padding."""
    if policy == "stretch":
        return size, size
    scale = size / (min if policy == "crop" else max)(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduction_for(width: int, height: int, size: int, policy: str = "stretch") -> int:
    """The largest JPEG decode reduction (8, 4, 2 or 1) that still leaves at least the target
    number of pixels on each side, so the exact resize after it only ever shrinks."""
    target_width, target_height = target_shape(width, height, size, policy)
    for factor in REDUCTIONS:
        if (math.ceil(width / factor) >= target_width
                and math.ceil(height / factor) >= target_height):
            return factor
    return 1


def _imdecode(data: bytes, flags: int, kind: str) -> np.ndarray:
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error:  # OpenCV raises for some malformed files instead of returning None
        image = None
    if image is None or image.size == 0:
        raise ImageError("undecodable image", kind)
    return image


def _to_uint8(image: np.ndarray, kind: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255 / 65535)
    if image.dtype in (np.float32, np.float64):
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    raise ImageError("unsupported pixel format", f"{kind} {image.dtype}")


def _to_rgb(image: np.ndarray, kind: str) -> np.ndarray:
    """An image as decoded with IMREAD_UNCHANGED (any channels, any depth) to 8-bit RGB."""
    image = _to_uint8(image, kind)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels in (2, 4):
        colour = image[:, :, :1] if channels == 2 else image[:, :, 2::-1]  # BGR -> RGB
        alpha = image[:, :, -1:].astype(np.uint16)
        # Composite over white: out = colour·a + 255·(1 − a), a in [0, 255], rounded.
        blended = (colour.astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        blended = blended.astype(np.uint8)
        if channels == 2:
            return cv2.cvtColor(blended[:, :, 0], cv2.COLOR_GRAY2RGB)
        return np.ascontiguousarray(blended)
    raise ImageError("unsupported pixel format", f"{kind} with {channels} channels")


def decode(data: bytes, size: int | None = None, policy: str = "stretch"
           ) -> tuple[np.ndarray, int, int]:
    """Decode image bytes to an 8-bit RGB array (H, W, 3), or raise :class:`ImageError`.

    With ``size``, a large JPEG is decoded at a reduced scale that still leaves at least the
    pixels the ``size``/``policy`` resize needs. Returns the array and the photo's full
    width and height (upright, after EXIF orientation).
    """
    header = read_header(data)
    check_size(header)
    factor = 1
    if header.kind == "jpeg":
        if size is not None:
            factor = reduction_for(header.width, header.height, size, policy)
        image = _imdecode(data, _REDUCED_FLAG[factor] | cv2.IMREAD_COLOR_RGB, header.kind)
    else:
        # IMREAD_UNCHANGED keeps alpha and 16 bits, but makes OpenCV ignore EXIF orientation
        image = _to_rgb(_imdecode(data, cv2.IMREAD_UNCHANGED, header.kind), header.kind)
        image = upright(image, exif_orientation(data, header.kind))
    height, width = image.shape[:2]
    if factor > 1:
        # Report the full size; EXIF orientation may have turned the photo by 90 degrees.
        stored = (math.ceil(header.height / factor), math.ceil(header.width / factor))
        turned = (height, width) != stored and (width, height) == stored
        width, height = (header.height, header.width) if turned else (header.width,
                                                                       header.height)
    return image, width, height


def interpolation_for(width: int, height: int, target: tuple[int, int]) -> int:
    """``INTER_AREA`` when shrinking by 2× or more on a side (averages every source pixel:
    no aliasing), ``INTER_LINEAR`` when shrinking by less (each output pixel already blends
    the 2×2 source pixels around it; four times faster than INTER_AREA at these ratios, and
    the usual case after a reduced JPEG decode), ``INTER_CUBIC`` when enlarging."""
    if target[0] > width or target[1] > height:
        return cv2.INTER_CUBIC
    if width >= 2 * target[0] or height >= 2 * target[1]:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def resize(image: np.ndarray, size: int, policy: str = "stretch") -> np.ndarray:
    """Resize an RGB array to ``size``×``size`` following ``policy`` (see RESIZE_POLICIES)."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {RESIZE_POLICIES}")
    height, width = image.shape[:2]
    target = target_shape(width, height, size, policy)
    interpolation = interpolation_for(width, height, target)
    resized = cv2.resize(image, target, interpolation=interpolation)
    if policy == "crop":
        top = (resized.shape[0] - size) // 2
        left = (resized.shape[1] - size) // 2
        resized = resized[top : top + size, left : left + size]
    elif policy == "pad":
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        top = (size - resized.shape[0]) // 2
        left = (size - resized.shape[1]) // 2
        canvas[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
        resized = canvas
    return np.ascontiguousarray(resized)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An RGB array (H, W, 3) as it is (``channels=3``) or gray, (H, W, 1) (``channels=1``)."""
    if channels == 3:
        return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, np.newaxis]
    raise ValueError(f"channels must be one of {', '.join(map(str, CHANNELS))}, got {channels}")


def check_options(size: int, policy: str, channels: int) -> None:
    """Raise ValueError for a size, resize policy or channel count no photo can be made to."""
    if size < MIN_SIDE:
        raise ValueError(f"image size must be at least {MIN_SIDE}, got {size}")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {RESIZE_POLICIES}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {', '.join(map(str, CHANNELS))}, "
                         f"got {channels}")


def photo_from_bytes(data: bytes, size: int, policy: str = "stretch", channels: int = 3
                     ) -> tuple[np.ndarray, int, int]:
    """Like :func:`load_photo`, from bytes already read."""
    check_options(size, policy, channels)
    image, width, height = decode(data, size, policy)
    return to_channels(resize(image, size, policy), channels), width, height


def load_photo(
    path: str | os.PathLike[str], size: int, policy: str = "stretch", channels: int = 3
) -> tuple[np.ndarray, int, int]:
    """Like :func:`load_image`, also returning the photo's original width and height."""
    check_options(size, policy, channels)
    return photo_from_bytes(read_bytes(path), size, policy, channels)


def load_image(
    path: str | os.PathLike[str], size: int, policy: str = "stretch", channels: int = 3
) -> np.ndarray:
    """Read ``path`` and return a (size, size, channels) uint8 array: RGB for 3 channels,
    gray for 1 (whatever the photo's own colours).

    Raises :class:`ImageError` (a ``ValueError``) with a short reason for any file that is not
    a usable photo; it never returns a partial or garbage image.
    """
    return load_photo(path, size, policy, channels)[0]
