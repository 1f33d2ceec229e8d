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


# ---------------------------------------------------------------------------------------------
# Hostile bytes: statuses that tell the truth, memory checked from the header, never an exception

import tracemalloc  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ood_ray.io.decode import REFUSED_FORMATS, estimate_decode_bytes, short_error, sniff_format  # noqa: E402
from ood_ray.stats.image import compute_images_stats  # noqa: E402


def animated(rgb, fmt):
    frames = [rgb, rgb.rotate(90), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_a_cut_later_frame_is_truncated_not_ok(rgb, fmt):
    data = animated(rgb, fmt)
    assert decode_image(data, LIMIT).status == "ok"
    assert decode_image(data, LIMIT).frames == 3
    cut = decode_image(data[: int(len(data) * 0.9)], LIMIT)
    assert cut.status == "truncated", cut.error


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF", "JPEG2000"])
def test_formats_decoded_at_open_are_truncated_when_cut(rgb, fmt):
    data = encode(rgb, fmt)
    for fraction in (0.9, 0.5, 0.1):
        assert decode_image(data[: int(len(data) * fraction)], LIMIT).status == "truncated"


def test_eps_heic_and_pdf_are_undecodable_not_truncated(rgb):
    eps = decode_image(encode(rgb, "EPS"), LIMIT)
    assert eps.status == "undecodable" and eps.error == REFUSED_FORMATS["EPS"]
    assert decode_image(b"\x00\x00\x00\x18ftypheic" + bytes(100), LIMIT).status == "undecodable"
    assert decode_image(encode(rgb, "PDF"), LIMIT).status == "undecodable"


@pytest.mark.parametrize("channels,mode", [(3, "RGB;16"), (4, "RGBA;16"), (2, "LA;16")])
def test_sixteen_bit_colour_png_keeps_every_bit(channels, mode):
    import struct
    import zlib

    values = np.random.default_rng(1).integers(0, 65536, (12, 10, channels)).astype(np.uint16)
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(12))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour_type = {3: 2, 4: 6, 2: 4}[channels]
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 12, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    decoded = decode_image(data, LIMIT)
    assert decoded.status == "ok" and decoded.depth == 16 and decoded.decoded_mode == mode
    np.testing.assert_array_equal(decoded.pixels, values)
    assert decode_image(data[: len(data) - 30], LIMIT).status == "truncated"


def test_sixteen_bit_rgb_tiff_keeps_every_bit():
    import cv2

    values = np.random.default_rng(2).integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    ok, buffer = cv2.imencode(".tiff", values[:, :, ::-1])
    decoded = decode_image(buffer.tobytes(), LIMIT)
    assert decoded.status == "ok" and decoded.depth == 16
    np.testing.assert_array_equal(decoded.pixels, values)


def test_decode_memory_is_checked_from_the_header(rgb):
    data = encode(rgb, "PNG")
    need = estimate_decode_bytes(50, 40, "RGB")
    assert decode_image(data, LIMIT, max_decode_bytes=need).status == "ok"
    refused = decode_image(data, LIMIT, max_decode_bytes=need - 1)
    assert refused.status == "too_large" and "max_decode_bytes" in refused.error
    assert (refused.width, refused.height) == (50, 40)


@pytest.mark.parametrize("mode,dtype,channels", [("RGB", np.uint8, 3), ("L", np.uint8, 1), ("RGBA", np.uint8, 4),
                                                 ("RGB;16", np.uint16, 3), ("I;16", np.uint16, 1)])
def test_the_memory_estimate_covers_the_measured_peak(mode, dtype, channels):
    height, width = 1500, 2000
    high = 256 if dtype == np.uint8 else 65536
    pixels = np.random.default_rng(0).integers(0, high, (height, width, channels)).astype(dtype)
    tracemalloc.start()
    copy = pixels.copy()  # the decoded array the statistics start from
    compute_images_stats([copy], [16 if dtype == np.uint16 else 8])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    estimate = estimate_decode_bytes(width, height, mode)
    assert peak <= estimate <= 3 * peak + width * height * 8


def test_errors_carry_no_object_addresses():
    from PIL import UnidentifiedImageError

    error = short_error(UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e50>"))
    assert "0x" not in error and error == "UnidentifiedImageError: cannot identify image file"


def test_signatures():
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert sniff_format(b"BM is not a bitmap header at all") is None
    assert sniff_format(b"plain text") is None


def _seed_files():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")
    seeds = {fmt: encode(image, fmt) for fmt in ("PNG", "JPEG", "BMP", "WEBP", "AVIF", "JPEG2000", "ICO", "TGA")}
    seeds["GIF"] = animated(image, "GIF")
    seeds["TIFF"] = animated(image, "TIFF")
    seeds["APNG"] = animated(image, "PNG")
    seeds["PNG16"] = encode(Image.fromarray(rng.integers(0, 65536, (24, 32)).astype(np.uint16)), "PNG")
    return seeds


SEEDS = _seed_files()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SEEDS)),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.floats(0, 1, exclude_min=True)))
def test_decode_never_raises_on_mutated_files(fmt, edits, cut):
    data = bytearray(SEEDS[fmt])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]
    decoded = decode_image(bytes(data), max_pixels=10_000_000, max_decode_bytes=1 << 30)
    assert decoded.status in STATUSES
    assert (decoded.pixels is not None) == (decoded.status == "ok")
    assert decoded.error is None or (len(decoded.error) <= ERROR_MAX_CHARS and "\n" not in decoded.error)
