"""Exact and perceptual hashes, and sharpness against DataEval's edge filter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_ray.io.decode import decode_image
from ood_ray.stats.hashes import (
    compute_dhash,
    compute_hash_pixels,
    compute_luma,
    compute_phash,
    hamming_distance,
)
from ood_ray.stats.visual import compute_sharpness


def textured(seed: int = 0, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = 128 + 60 * np.sin(xx / 7.0 + seed) * np.cos(yy / 5.0) + rng.normal(0, 8, size)
    return np.clip(np.stack([base, base[::-1], base.T[: size[0], : size[1]] if size[0] == size[1] else base], -1), 0, 255).astype(np.uint8)


def test_hash_pixels_ignores_container_but_not_pixels_or_shape():
    pixels = textured()
    via = {}
    for fmt in ("PNG", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        via[fmt] = compute_hash_pixels(decode_image(buffer.getvalue(), 10**8).pixels)
    assert len(set(via.values())) == 1
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert compute_hash_pixels(changed) != via["PNG"]
    flat = pixels.reshape(pixels.shape[1], pixels.shape[0], 3)  # same bytes, other shape
    assert compute_hash_pixels(flat) != via["PNG"]


REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def test_perceptual_hashes_survive_small_edits_and_separate_different_images():
    """On a real photo: JPEG re-encode, a 2-px crop and a 90% resize stay near; another photo is far."""
    image = Image.open(REAL / "imagenet_00_243.jpg").convert("RGB")
    pixels = np.asarray(image)
    luma = compute_luma(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=60)
    jpeg = compute_luma(np.asarray(Image.open(buffer)))
    cropped = compute_luma(pixels[2:-2, 2:-2])
    resized = compute_luma(np.asarray(image.resize((460, 460), Image.Resampling.BILINEAR)))
    other = compute_luma(np.asarray(Image.open(REAL / "cifar10_00_3.png").convert("RGB")))
    for hash_fn in (compute_phash, compute_dhash):
        assert hamming_distance(hash_fn(luma), hash_fn(jpeg)) <= 4
        assert hamming_distance(hash_fn(luma), hash_fn(cropped)) <= 4
        assert hamming_distance(hash_fn(luma), hash_fn(resized)) <= 4
        assert hamming_distance(hash_fn(luma), hash_fn(other)) > 12


def test_no_perceptual_hash_for_tiny_or_constant_images():
    assert compute_phash(np.zeros((8, 40), np.uint8)) is None
    assert compute_dhash(np.zeros((8, 40), np.uint8)) is None
    assert compute_phash(np.full((40, 40), 200, np.uint8)) is None
    assert compute_dhash(np.full((40, 40), 7, np.uint8)) is None


def test_hamming_distance_is_a_popcount():
    a = np.array([0, 0xFFFFFFFFFFFFFFFF, 0b1011], dtype=np.uint64)
    b = np.array([1, 0, 0b0001], dtype=np.uint64)
    assert hamming_distance(a, b).tolist() == [1, 64, 2]


def test_sharpness_equals_dataeval_edge_filter():
    edge_filter = pytest.importorskip("dataeval.utils.preprocessing").edge_filter
    pixels = textured(3)
    whole, per_channel = compute_sharpness(pixels, per_channel=True)
    gray = pixels.astype(np.float64).mean(axis=2)
    assert whole * 255 == pytest.approx(np.std(edge_filter(gray)), rel=1e-9)
    for c in range(3):
        assert per_channel[c] * 255 == pytest.approx(np.std(edge_filter(pixels[:, :, c].astype(np.float64))), rel=1e-9)


def test_sharpness_known_answers():
    assert compute_sharpness(np.full((9, 9, 1), 90, np.uint8))[0] == 0.0
    # Interior of a 0/255 checkerboard: the filter saturates to 255.5 -> 255 on white and to
    # -1019.5 -> 0 on black, so e is half 255 and half 0 (std 127.5) -- borders aside.
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.uint8) * 255
    whole, _ = compute_sharpness(board[:, :, None])
    assert whole == pytest.approx(127.5 / 255, abs=0.01)
    sixteen = compute_sharpness((board.astype(np.uint16) * 257)[:, :, None])[0]
    assert sixteen == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize("shape", [(37, 41, 1), (37, 41, 2), (20, 30, 3), (9, 12, 4), (1, 7, 3), (7, 1, 1), (2, 2, 3)])
def test_integer_sharpness_equals_the_float_filter(shape):
    """The exact-integer 8-bit path against SciPy's float64 convolution (DataEval's definition)."""
    from scipy.ndimage import convolve

    kernel = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)

    def reference(plane):
        return np.std(np.clip(convolve(plane, kernel, mode="reflect") + 0.5, 0, 255)) / 255

    whole, per = compute_sharpness(pixels, per_channel=True)
    assert whole == pytest.approx(reference(pixels.astype(np.float64).mean(axis=2)), rel=1e-9, abs=1e-12)
    for c in range(shape[2]):
        assert per[c] == pytest.approx(reference(pixels[:, :, c].astype(np.float64)), rel=1e-9, abs=1e-12)


def test_the_truncated_dct_equals_the_full_one_to_the_bit():
    """phash keeps the 8 lowest frequencies; running the second DCT on those 8 rows only gives the
    same floats (DataEval parity depends on it: a coefficient compared with the median)."""
    from scipy.fft import dct

    rng = np.random.default_rng(0)
    for size in (8, 16, 24, 32):
        x = rng.integers(0, 256, (200, size, size)).astype(np.float64)
        full = dct(dct(x, axis=1), axis=2)[:, :8, :8]
        assert np.array_equal(full, dct(dct(x, axis=1)[:, :8, :], axis=2)[:, :, :8])


@pytest.mark.parametrize("shape,dtype", [((3, 32, 32, 3), np.uint8), ((2, 150, 120, 3), np.uint8), ((2, 40, 30, 1), np.uint8),
                                         ((2, 25, 30, 3), np.uint16), ((1, 1, 1, 1), np.uint8)])
def test_edge_p99_is_the_lower_99th_percentile_of_the_absolute_edge_response(shape, dtype):
    """Every path (the 8-bit values below the histogram size, the 8-bit histogram above it, the
    16-bit float filter) against SciPy's convolution and NumPy's ``inverted_cdf`` percentile."""
    from scipy.ndimage import convolve

    from ood_ray.stats.visual import compute_batch_spatial

    kernel = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)
    top = 65535 if dtype == np.uint16 else 255
    stack = np.random.default_rng(shape[1]).integers(0, top + 1, size=shape).astype(dtype)
    for image, value in zip(stack, compute_batch_spatial(stack).edge_p99):
        gray = image.astype(np.float64).mean(axis=2) * (255 / top)
        response = np.abs(convolve(gray, kernel, mode="reflect"))
        assert value == pytest.approx(np.percentile(response, 99, method="inverted_cdf") / 255, rel=1e-9, abs=1e-12)


def test_edge_p99_tells_a_flat_picture_with_a_sharp_object_from_a_blurred_one():
    """A small square 40 levels darker on a flat gray field: most pixels do not respond to the edge
    filter, so its ``sharpness`` is well below a sharp texture's, while its strongest edges are as
    strong as the texture's; blurring the texture divides its ``edge_p99`` several times."""
    from PIL import ImageFilter

    from ood_ray.stats.visual import compute_batch_spatial

    field = np.full((32, 32, 3), 150, np.uint8)
    field[12:18, 14:20] = 110
    texture = textured(3)[:32, :32]
    blurred = np.asarray(Image.fromarray(texture).filter(ImageFilter.GaussianBlur(3)))
    spatial = compute_batch_spatial(np.stack([field, texture, blurred]))
    sharpness, strongest = spatial.sharpness, spatial.edge_p99
    assert sharpness[0] < 0.6 * sharpness[1]
    assert strongest[0] > 0.9 * strongest[1]
    assert strongest[2] < strongest[1] / 4
    # 40 levels: the response at the square's inner corners is 5 x 40 = 200 (over 255), at its
    # edges 3 x 40 = 120; the ring of responding pixels is > 1% of the image
    assert strongest[0] == pytest.approx(120 / 255)


@pytest.mark.parametrize("shape,dtype", [((3, 32, 32, 3), np.uint8), ((2, 150, 120, 3), np.uint8), ((2, 40, 30, 1), np.uint8),
                                         ((2, 25, 30, 4), np.uint8), ((2, 25, 30, 3), np.uint16), ((2, 2, 9, 3), np.uint8)])
def test_relative_detail_against_scipy(shape, dtype):
    """``edge_contrast = 255 edge_p99 / std(g)`` and Immerkaer's ``sqrt(pi/2)/6 mean|conv(g, M)| / std(g)``
    on the channel-mean image, every path (8-bit integer sums with 1, 3 and 4 channels, 16-bit
    float), against SciPy's valid-mode convolution; under 3 pixels on a side ``noise_ratio`` is NaN."""
    from scipy.signal import convolve2d

    from ood_ray.stats.visual import compute_batch_spatial

    top = 65535 if dtype == np.uint16 else 255
    stack = np.random.default_rng(shape[2]).integers(0, top + 1, size=shape).astype(dtype)
    stack[0, : shape[1] // 2] //= 3  # not white noise everywhere
    spatial = compute_batch_spatial(stack)
    strongest, edge_contrast, noise_ratio = spatial.edge_p99, spatial.edge_contrast, spatial.noise_ratio
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    for image, top_edge, ec, nr in zip(stack, strongest, edge_contrast, noise_ratio):
        gray = image.astype(np.float64).mean(axis=2) * (255 / top)
        assert ec == pytest.approx(255 * top_edge / gray.std(), rel=1e-9)
        if min(shape[1:3]) < 3:
            assert np.isnan(nr)
        else:
            sigma = np.sqrt(np.pi / 2) / 6 * np.abs(convolve2d(gray, mask, mode="valid")).mean()
            assert nr == pytest.approx(sigma / gray.std(), rel=1e-9)


def test_relative_detail_ignores_exposure_and_tells_blur_and_noise_apart():
    """A gain and an offset leave both ratios as they are (a dim picture is not a blurred one, which
    ``edge_p99`` alone cannot say); blur divides ``edge_contrast`` and ``noise_ratio``; uniform pixel
    noise has ``noise_ratio`` about 1 (Immerkaer's estimate of its own sigma), a natural texture a
    small fraction of it; a constant image is 0 on both."""
    from PIL import ImageFilter

    from ood_ray.stats.visual import compute_batch_spatial

    texture = textured(5)[:48, :48]
    dimmed = (texture // 4 + 7).astype(np.uint8)  # ~a quarter of the exposure: same picture
    blurred = np.asarray(Image.fromarray(texture).filter(ImageFilter.GaussianBlur(3)))
    noise = np.random.default_rng(9).integers(0, 256, (48, 48, 3)).astype(np.uint8)
    flat = np.full((48, 48, 3), 77, np.uint8)
    doubled = (texture.astype(np.int64) // 2 * 2).astype(np.uint8)
    halved_then_doubled = (texture.astype(np.int64) // 2).astype(np.uint8)
    stack = np.stack([texture, dimmed, blurred, noise, flat, doubled, halved_then_doubled])
    spatial = compute_batch_spatial(stack)
    strongest, edge_contrast, noise_ratio = spatial.edge_p99, spatial.edge_contrast, spatial.noise_ratio
    # x2 exactly (levels 0-127 doubled): identical ratios; the edge_p99 itself doubles
    assert edge_contrast[5] == pytest.approx(edge_contrast[6], rel=1e-12)
    assert noise_ratio[5] == pytest.approx(noise_ratio[6], rel=1e-12)
    assert strongest[5] == pytest.approx(2 * strongest[6], rel=1e-12)
    # a quarter of the exposure (with rounding): within a few percent, while edge_p99 falls ~4x
    assert edge_contrast[1] == pytest.approx(edge_contrast[0], rel=0.1)
    assert strongest[1] < strongest[0] / 3
    assert edge_contrast[2] < edge_contrast[0] / 3 and noise_ratio[2] < noise_ratio[0] / 3
    assert noise_ratio[3] == pytest.approx(1.0, abs=0.1)
    assert noise_ratio[0] < 0.25
    assert edge_contrast[4] == 0 and noise_ratio[4] == 0
