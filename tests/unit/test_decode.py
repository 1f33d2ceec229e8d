"""Safe decode: one status per kind of bad input, and the mode conversions."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ood_ray.demo import bomb_png
from ood_ray.io.decode import ERROR_MAX_CHARS, STATUSES, decode_image

LIMIT = 10**8


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"])
def test_every_format_decodes(rgb, fmt):
    decoded = decode_image(encode(rgb, fmt), LIMIT)
    assert decoded.status == "ok"
    assert decoded.format == fmt
    assert decoded.pixels.shape[:2] == (40, 50)
    assert decoded.pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF", "BMP"])
def test_cut_files_are_truncated(rgb, fmt):
    data = encode(rgb, fmt)
    decoded = decode_image(data[: len(data) // 2], LIMIT)
    assert decoded.status == "truncated", decoded.error
    assert decoded.width == 50 and decoded.pixels is None


def test_empty_and_not_an_image():
    assert decode_image(b"", LIMIT).status == "empty"
    assert decode_image(b"%PDF-1.4 not an image" * 20, LIMIT).status == "undecodable"


def test_decompression_bomb_is_refused_from_the_header():
    decoded = decode_image(bomb_png(30000, 30000), max_pixels=50_000_000)
    assert decoded.status == "too_large"
    assert (decoded.width, decoded.height) == (30000, 30000)
    assert "max_pixels" in decoded.error


def test_pixel_and_byte_limits_are_configurable(rgb):
    assert decode_image(encode(rgb, "PNG"), max_pixels=40 * 50 - 1).status == "too_large"
    assert decode_image(encode(rgb, "PNG"), max_pixels=40 * 50).status == "ok"
    assert decode_image(encode(rgb, "PNG"), LIMIT, max_file_bytes=10).status == "too_large"


def test_float_images_are_unsupported_mode():
    data = encode(Image.fromarray(np.zeros((8, 8), np.float32)), "TIFF")
    decoded = decode_image(data, LIMIT)
    assert decoded.status == "unsupported_mode" and decoded.mode == "F"


@pytest.mark.parametrize(
    "make,expected_mode,channels,depth",
    [
        (lambda im: im.convert("L"), "L", 1, 8),
        (lambda im: im.convert("1"), "L", 1, 1),
        (lambda im: im.convert("RGBA"), "RGBA", 4, 8),
        (lambda im: im.convert("LA"), "LA", 2, 8),
        (lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE), "RGB", 3, 8),
        (lambda im: im.convert("CMYK"), "RGB", 3, 8),
    ],
)
def test_mode_conversions(rgb, make, expected_mode, channels, depth):
    image = make(rgb)
    fmt = "TIFF" if image.mode in ("CMYK", "LA") else "PNG"
    decoded = decode_image(encode(image, fmt), LIMIT)
    assert decoded.status == "ok"
    assert decoded.decoded_mode == expected_mode
    assert decoded.pixels.shape[2] == channels
    assert decoded.depth == depth


def test_palette_with_transparency_keeps_alpha():
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = encode(image, "PNG", transparency=0)
    decoded = decode_image(data, LIMIT)
    assert decoded.decoded_mode == "RGBA"
    assert decoded.pixels[0, 0].tolist() == [255, 0, 0, 255]


def test_sixteen_bit_png_keeps_sixteen_bits():
    values = np.arange(0, 65536, 257, dtype=np.uint16)[:256].reshape(16, 16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"), LIMIT)
    assert decoded.status == "ok" and decoded.depth == 16
    assert decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], values)


def test_animated_gif_records_frames(rgb):
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), LIMIT)
    assert decoded.status == "ok" and decoded.frames == 2


def test_errors_are_short_and_statuses_closed(rgb):
    data = encode(rgb, "PNG")
    for blob in (b"", b"junk" * 1000, data[:100], data[: len(data) - 10]):
        decoded = decode_image(blob, LIMIT)
        assert decoded.status in STATUSES
        assert decoded.error is None or (len(decoded.error) <= ERROR_MAX_CHARS and "\n" not in decoded.error)
