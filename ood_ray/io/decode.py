"""Safe decoding of one image: bytes in, pixels or a status out -- never an exception.

Status codes (a closed set, :data:`STATUSES`):

==================  ==========================================================================
``ok``              decoded; statistics follow
``missing``         the object was listed or named but could not be read (set by the fetcher)
``empty``           zero bytes
``undecodable``     not an image, or a format Pillow cannot identify or decode
``truncated``       the header parsed but the pixel data ended early or is broken
``too_large``       ``width * height`` over ``max_pixels`` (checked from the header, before any
                    pixel is decoded, so a decompression bomb never allocates), or more bytes
                    than ``max_file_bytes``
``unsupported_mode`` a pixel mode we do not compute statistics for (32-bit int ``I``, float
                    ``F``, ``LAB``, ``HSV``, ...)
==================  ==========================================================================

Decoded arrays are ``(H, W, C)`` ``uint8`` or ``uint16``. Mode conversions: ``1`` -> ``L`` (0/255,
depth 1); ``P`` -> ``RGB`` (``RGBA`` when the palette has transparency); ``PA`` -> ``RGBA``;
``CMYK``/``YCbCr``/``RGBX`` -> ``RGB``; ``La`` -> ``LA``; ``RGBa`` -> ``RGBA``; ``I;16*`` ->
one uint16 channel. The first frame of an animated GIF/WebP or multi-page TIFF is decoded; the
frame count is recorded.
"""

from __future__ import annotations

import io
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
}


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


def short_error(exc: BaseException) -> str:
    """``Type: message`` on one line, at most :data:`ERROR_MAX_CHARS` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


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


def decode_image(data: bytes, max_pixels: int, max_file_bytes: int | None = None) -> Decoded:
    """Decode ``data`` into an ``(H, W, C)`` array, or say why not (see module docstring)."""
    if len(data) == 0:
        return Decoded(EMPTY, "zero bytes")
    if max_file_bytes is not None and len(data) > max_file_bytes:
        return Decoded(TOO_LARGE, f"more than max_file_bytes={max_file_bytes} bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Our own header check below replaces Pillow's global bomb guard, so the row can say how
    # large the image claims to be; nothing is decoded before that check.
    Image.MAX_IMAGE_PIXELS = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return Decoded(TOO_LARGE, short_error(exc))
        except UnidentifiedImageError:
            return Decoded(UNDECODABLE, "not a recognised image format")
        except Exception as exc:  # noqa: BLE001 - any parser failure is a row, not a crash
            return Decoded(UNDECODABLE, short_error(exc))
        fmt, mode = image.format, image.mode
        width, height = image.size
        frames = int(getattr(image, "n_frames", 1) or 1)
        meta = {"format": fmt, "mode": mode, "width": width, "height": height, "frames": frames}
        if width * height > max_pixels:
            return Decoded(TOO_LARGE, f"{width}x{height} = {width * height} px > max_pixels={max_pixels}", **meta)
        rule = _MODE_RULES.get(mode)
        if rule is None:
            return Decoded(UNSUPPORTED_MODE, f"mode {mode!r} is not supported", **meta)
        target, depth = rule
        try:
            image.load()
        except OSError as exc:
            return Decoded(TRUNCATED, short_error(exc), **meta)
        except Exception as exc:  # noqa: BLE001
            return Decoded(UNDECODABLE, short_error(exc), **meta)
        try:
            pixels = _to_array(image, target)
        except Exception as exc:  # noqa: BLE001
            return Decoded(UNDECODABLE, short_error(exc), **meta)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        return Decoded(UNDECODABLE, "image has no pixels", **meta)
    decoded_mode = "RGBA" if target == "RGB" and pixels.shape[2] == 4 else target
    return Decoded(OK, None, depth=depth, decoded_mode=decoded_mode, pixels=pixels, **meta)
