"""Safe decoding of one image: bytes in, pixels or a status out -- never an exception.

Status codes (a closed set, :data:`STATUSES`):

==================  ==========================================================================
``ok``              decoded; statistics follow
``missing``         the object was listed or named but could not be read (set by the fetcher)
``empty``           zero bytes
``undecodable``     not an image, or a format Pillow cannot decode (a missing codec, EPS, which
                    would need Ghostscript to run on untrusted input, WMF, ...)
``truncated``       a file of a recognised image format (its signature or header was read) whose
                    data ends early or is corrupt -- in any frame of an animated or multi-page file
``too_large``       ``width * height`` over ``max_pixels``, or decoding plus statistics would need
                    more than ``max_decode_bytes`` of memory (both checked from the header, before
                    any pixel is decoded, so a decompression bomb never allocates), or more bytes
                    than ``max_file_bytes``
``unsupported_mode`` a pixel mode we do not compute statistics for (32-bit int ``I``, float
                    ``F``, ``LAB``, ``HSV``, ...)
==================  ==========================================================================

How decoders' failures map to statuses: a file whose signature is one of a raster format
(:func:`sniff_format`) and that Pillow cannot open, or that fails after its header was read, is
``truncated`` (a WebP or AVIF cut short fails while it is opened, since those decoders read
everything at once); a message saying that a decoder or codec is not available, or that a
variant of the format is not supported, is ``undecodable``; everything else is ``undecodable``.

Decoded arrays are ``(H, W, C)`` ``uint8`` or ``uint16``. Mode conversions: ``1`` -> ``L`` (0/255,
depth 1); ``P`` -> ``RGB`` (``RGBA`` when the palette has transparency); ``PA`` -> ``RGBA``;
``CMYK``/``YCbCr``/``RGBX`` -> ``RGB``; ``La`` -> ``LA``; ``RGBa`` -> ``RGBA``; ``I;16*`` ->
one uint16 channel. **16-bit colour**: Pillow reduces 16-bit RGB, RGBA and gray+alpha PNG and
TIFF files to 8 bits; those are read at their full 16 bits by OpenCV instead (``depth`` 16, uint16
channels), so their statistics see every bit.

Animated and multi-page files: the first frame is decoded for the statistics; every other frame
is loaded too (one at a time, each checked against the limits first), so a file whose later
frames are cut short is ``truncated``, not ``ok``; ``frames`` holds the frame count.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

OK = "ok"
MISSING = "missing"
EMPTY = "empty"
UNDECODABLE = "undecodable"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"
UNSUPPORTED_MODE = "unsupported_mode"
STATUSES: tuple[str, ...] = (OK, MISSING, EMPTY, UNDECODABLE, TRUNCATED, TOO_LARGE, UNSUPPORTED_MODE)

ERROR_MAX_CHARS = 200

# mode -> (target mode, depth in bits); a missing mode is unsupported.
_MODE_RULES: dict[str, tuple[str, int]] = {
    "1": ("L", 1),
    "L": ("L", 8),
    "LA": ("LA", 8),
    "La": ("LA", 8),
    "P": ("RGB", 8),
    "PA": ("RGBA", 8),
    "RGB": ("RGB", 8),
    "RGBA": ("RGBA", 8),
    "RGBa": ("RGBA", 8),
    "RGBX": ("RGB", 8),
    "CMYK": ("RGB", 8),
    "YCbCr": ("RGB", 8),
    "I;16": ("I;16", 16),
    "I;16L": ("I;16", 16),
    "I;16B": ("I;16", 16),
    "I;16N": ("I;16", 16),
}

#: Band names of each decoded mode, for the ``channels`` table.
BAND_NAMES: dict[str, tuple[str, ...]] = {
    "L": ("L",),
    "LA": ("L", "A"),
    "RGB": ("R", "G", "B"),
    "RGBA": ("R", "G", "B", "A"),
    "I;16": ("L",),
    "LA;16": ("L", "A"),
    "RGB;16": ("R", "G", "B"),
    "RGBA;16": ("R", "G", "B", "A"),
}

#: Formats Pillow can open but that are refused: EPS is rendered by running Ghostscript, which is
#: not something to run on untrusted input.
REFUSED_FORMATS: dict[str, str] = {
    "EPS": "EPS needs Ghostscript, which ood-ray does not run on untrusted input",
}

#: Decoder messages that mean "this format or variant cannot be decoded here", not "broken data".
_UNSUPPORTED = re.compile(r"not available|ghostscript|cannot find loader|not supported|unsupported|unknown "
                          r"(compression|raw mode|pixel mode)|no (decoder|loader)|not implemented", re.IGNORECASE)

_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_ISO_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF"}


def sniff_format(data: bytes) -> str | None:
    """The raster format named by the first bytes of ``data`` (its signature), or ``None``."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_BRANDS:
        return _ISO_BRANDS[head[8:12]]
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_HEADER_SIZES:
        return "BMP"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"qoif"):
        return "QOI"
    if head.startswith(b"DDS "):
        return "DDS"
    if head.startswith(b"icns"):
        return "ICNS"
    if head.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")) and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO"
    return None


@dataclass(frozen=True)
class Decoded:
    """Outcome of decoding one object. ``pixels`` is set only when ``status == "ok"``."""

    status: str
    error: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    depth: int | None = None
    decoded_mode: str | None = None
    pixels: np.ndarray | None = None


_OBJECT_REPR = re.compile(r" ?<[^<>]* (object )?at 0x[0-9a-fA-F]+>")


def short_error(exc: BaseException) -> str:
    """``Type: message`` on one line, at most :data:`ERROR_MAX_CHARS` characters (object addresses
    such as ``<_io.BytesIO object at 0x...>`` removed, so a row's error is the same in every run)."""
    text = _OBJECT_REPR.sub("", f"{type(exc).__name__}: {exc}").replace("\n", " ")
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Memory needed to decode one image and compute its statistics

#: Peak bytes per pixel of the statistics and hashes on top of the decoded array, by sample width:
#: a base plus a share per channel (measured with tracemalloc on 3-megapixel images of every mode:
#: 8-bit 21-24, 16-bit 34-42 bytes per pixel; the sharpness filter and histograms dominate).
WORK_BYTES_PER_PIXEL = {1: 20.0, 2: 32.0}
WORK_BYTES_PER_CHANNEL_PIXEL = {1: 1.5, 2: 3.0}
#: Pillow's own buffer: 4 bytes per pixel for every multi-band 8-bit mode, 1 or 2 for one band.
_PILLOW_BYTES = {"L": 1, "I;16": 2}


def estimate_decode_bytes(width: int, height: int, decoded_mode: str) -> int:
    """Peak memory of decoding one ``width x height`` image into ``decoded_mode`` and computing its
    statistics: Pillow's buffer + the NumPy array + the statistics' work arrays."""
    pixels = width * height
    sample = 2 if decoded_mode.endswith(";16") or decoded_mode == "I;16" else 1
    channels = len(BAND_NAMES.get(decoded_mode, ("R", "G", "B", "A")))
    pillow = _PILLOW_BYTES.get(decoded_mode, 8 if sample == 2 else 4)
    work = WORK_BYTES_PER_PIXEL[sample] + channels * WORK_BYTES_PER_CHANNEL_PIXEL[sample]
    return int(pixels * (pillow + channels * sample + work))


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost. ``max_decode_bytes=None``: no memory check."""

    max_pixels: int
    max_file_bytes: int | None = None
    max_decode_bytes: int | None = None
    all_frames: bool = True


# ---------------------------------------------------------------------------------------------
# Decoding


def _failure(exc: BaseException, known_format: str | None, **meta) -> Decoded:
    """The status of a decoder failure (see module docstring)."""
    error = short_error(exc)
    if isinstance(exc, MemoryError):
        return Decoded(TOO_LARGE, f"out of memory while decoding: {error}", **meta)
    if _UNSUPPORTED.search(str(exc)):
        return Decoded(UNDECODABLE, error, **meta)
    if known_format is not None and not _pillow_reads(known_format):
        return Decoded(UNDECODABLE, f"{known_format} files cannot be decoded here (no Pillow plugin): {error}", **meta)
    if known_format is not None:
        return Decoded(TRUNCATED, error if meta else f"{known_format} data cut short or corrupt: {error}", **meta)
    return Decoded(UNDECODABLE, error, **meta)


def _pillow_reads(fmt: str) -> bool:
    """Whether this Pillow has a decoder for ``fmt`` (AVIF and JPEG 2000 depend on the build)."""
    Image.init()
    return fmt in Image.OPEN


def _sixteen_bit_colour(image: Image.Image, data: bytes) -> str | None:
    """``"RGB;16"``/``"RGBA;16"``/``"LA;16"`` when the file stores 16-bit colour or gray+alpha that
    Pillow would reduce to 8 bits (PNG and TIFF), else ``None``."""
    if image.format == "PNG" and len(data) >= 26:
        bit_depth, colour_type = data[24], data[25]
        if bit_depth == 16:
            return {2: "RGB;16", 6: "RGBA;16", 4: "LA;16"}.get(colour_type)
    elif image.format == "TIFF":
        bits = image.tag_v2.get(258)
        samples = image.tag_v2.get(277, 1)
        if isinstance(bits, tuple) and len(bits) > 1 and all(b == 16 for b in bits) and image.mode in ("RGB", "RGBA"):
            return {3: "RGB;16", 4: "RGBA;16"}.get(samples)
    return None


def _decode_sixteen_bit(data: bytes, target: str) -> np.ndarray:
    """16-bit colour through OpenCV (which keeps every bit), as ``(H, W, C)`` uint16 in RGB order."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise OSError("the 16-bit image data could not be decoded (cut short or corrupt)")
    if array.dtype != np.uint16 or array.ndim != 3:
        raise OSError(f"expected 16-bit colour, the decoder gave {array.dtype} with shape {array.shape}")
    if target == "LA;16":
        return np.ascontiguousarray(array[:, :, [0, 3]])
    order = [2, 1, 0, 3] if target == "RGBA;16" else [2, 1, 0]
    return np.ascontiguousarray(array[:, :, order])


def _to_array(image: Image.Image, target: str) -> np.ndarray:
    if target == "I;16":
        arr = np.asarray(image)
        return arr.astype(np.uint16, copy=False)[:, :, None]
    if image.mode == "P" and target == "RGB" and "transparency" in image.info:
        target = "RGBA"
    if image.mode != target:
        image = image.convert(target)
    arr = np.asarray(image)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _check_later_frames(image: Image.Image, frames: int, limits: DecodeLimits) -> Decoded | None:
    """Load frames 2..n one at a time; the first that fails (or is too large) says why."""
    for index in range(1, frames):
        try:
            image.seek(index)
            width, height = image.size
            if width * height > limits.max_pixels:
                return Decoded(TOO_LARGE, f"frame {index + 1} of {frames} is {width}x{height} > max_pixels={limits.max_pixels}")
            image.load()
        except EOFError as exc:
            return Decoded(TRUNCATED, f"frame {index + 1} of {frames} is missing: {short_error(exc)}")
        except Exception as exc:  # noqa: BLE001 - a broken frame is the row's status
            failed = _failure(exc, image.format)
            return Decoded(failed.status, f"frame {index + 1} of {frames}: {failed.error}")
    return None


def _decode(data: bytes, limits: DecodeLimits) -> Decoded:
    if len(data) == 0:
        return Decoded(EMPTY, "zero bytes")
    if limits.max_file_bytes is not None and len(data) > limits.max_file_bytes:
        return Decoded(TOO_LARGE, f"more than max_file_bytes={limits.max_file_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return Decoded(TOO_LARGE, short_error(exc))
    except UnidentifiedImageError as exc:
        signature = sniff_format(data)
        if signature is None:
            return Decoded(UNDECODABLE, "not a recognised image format")
        return _failure(exc, signature)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a row, not a crash
        return _failure(exc, sniff_format(data))
    with image:
        fmt, mode = image.format, image.mode
        width, height = image.size
        meta = {"format": fmt, "mode": mode, "width": width, "height": height}
        if fmt in REFUSED_FORMATS:
            return Decoded(UNDECODABLE, REFUSED_FORMATS[fmt], **meta)
        try:
            frames = int(getattr(image, "n_frames", 1) or 1)
        except Exception as exc:  # noqa: BLE001 - counting frames parses the whole file
            return _failure(exc, fmt, **meta)
        meta["frames"] = frames
        if width <= 0 or height <= 0:
            return Decoded(UNDECODABLE, "image has no pixels", **meta)
        if width * height > limits.max_pixels:
            return Decoded(TOO_LARGE, f"{width}x{height} = {width * height} px > max_pixels={limits.max_pixels}", **meta)
        rule = _MODE_RULES.get(mode)
        if rule is None:
            return Decoded(UNSUPPORTED_MODE, f"mode {mode!r} is not supported", **meta)
        target, depth = rule
        wide = _sixteen_bit_colour(image, data)
        if wide is not None:
            target, depth = wide, 16
        needed = estimate_decode_bytes(width, height, target)
        if limits.max_decode_bytes is not None and needed > limits.max_decode_bytes:
            return Decoded(TOO_LARGE, f"{width}x{height} {target} needs ~{needed / 2**20:,.0f} MiB to decode and "
                                      f"compute statistics > max_decode_bytes={limits.max_decode_bytes}", **meta)
        try:
            if wide is not None:
                pixels = _decode_sixteen_bit(data, target)
            else:
                image.load()
                pixels = _to_array(image, target)
        except Exception as exc:  # noqa: BLE001 - broken pixel data is the row's status
            return _failure(exc, fmt, **meta)
        if frames > 1 and limits.all_frames:
            broken = _check_later_frames(image, frames, limits)
            if broken is not None:
                return Decoded(broken.status, broken.error, **meta)
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        return Decoded(UNDECODABLE, "image has no pixels", **meta)
    decoded_mode = "RGBA" if target == "RGB" and pixels.shape[2] == 4 else target
    return Decoded(OK, None, depth=depth, decoded_mode=decoded_mode, pixels=pixels, **meta)


def decode_image(data: bytes, max_pixels: int, max_file_bytes: int | None = None, max_decode_bytes: int | None = None,
                 all_frames: bool = True) -> Decoded:
    """Decode ``data`` into an ``(H, W, C)`` array, or say why not (see module docstring).

    Never raises: whatever a decoder throws on hostile bytes ends as a status and an error.
    """
    return decode_with_limits(data, DecodeLimits(max_pixels, max_file_bytes, max_decode_bytes, all_frames))


def decode_with_limits(data: bytes, limits: DecodeLimits) -> Decoded:
    """:func:`decode_image` with its limits in one object."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Our own header checks replace Pillow's global bomb guard, so the row can say how large the
    # image claims to be; nothing is decoded before those checks.
    Image.MAX_IMAGE_PIXELS = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _decode(data, limits)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a row, never a crash
            return Decoded(UNDECODABLE, f"decoder failed: {short_error(exc)}")
