"""Pixel statistics: hand-computed answers on small arrays, and a direct NumPy/SciPy computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from ood_ray.stats.image import compute_aspect_ratio, compute_image_stats
from ood_ray.stats.pixels import compute_channel_histograms, compute_histogram_stats


def whole(pixels: np.ndarray, depth: int = 8) -> dict:
    return compute_image_stats(pixels, depth).image


def test_constant_image_has_no_spread():
    pixels = np.full((4, 5, 3), 51, np.uint8)  # 51 / 255 = 0.2
    s = whole(pixels)
    assert s["mean"] == pytest.approx(0.2)
    assert s["std"] == 0 and s["var"] == 0 and s["skew"] == 0 and s["kurtosis"] == 0
    assert s["entropy"] == 0
    assert s["zeros"] == 0 and s["missing"] == 0
    for q in ("p0", "p25", "p50", "p75", "p100", "brightness", "darkness"):
        assert s[q] == pytest.approx(0.2)
    assert s["contrast"] == pytest.approx(0.0)
    assert s["width"] == 5 and s["height"] == 4 and s["size"] == 20 and s["channels"] == 3


def test_black_image_counts_every_value_as_zero():
    s = whole(np.zeros((8, 8, 1), np.uint8))
    assert s["zeros"] == 1.0
    assert s["mean"] == 0 and s["contrast"] == 0  # no spread over a zero mean


def test_contrast_ties_are_exact_whatever_the_scale():
    """A digit on black -- p0..p75 at 0, p100 at 1 -- has contrast (1 - 0) / 0.2 = 5 exactly, however
    bright its stroke: an epsilon added to the mean would move every such image a hair off 5 (by
    ``5e-12``), and the adaptive lint, which treats a value shared by over half the images as a
    point mass, would see a spread where there is none (84 ordinary MNIST digits flagged)."""
    rng = np.random.default_rng(3)
    values = set()
    for stroke in (255, 200, 90, 1):
        pixels = np.zeros((28, 28, 1), np.uint8)
        pixels[rng.integers(0, 28, 20), rng.integers(0, 28, 20)] = stroke
        s = whole(pixels)
        assert s["p75"] == 0 and s["p100"] > 0
        values.add(s["contrast"])
    assert values == {5.0}


def test_ramp_of_all_levels():
    """0..255 once each: uniform over the levels -> closed-form moments and max entropy."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    s = whole(pixels)
    v = np.arange(256) / 255
    assert s["mean"] == pytest.approx(0.5)
    assert s["var"] == pytest.approx(v.var())
    assert s["skew"] == pytest.approx(0.0, abs=1e-12)
    # Discrete uniform on n points: excess kurtosis = -6 (n^2 + 1) / (5 (n^2 - 1)).
    assert s["kurtosis"] == pytest.approx(-6 * (256**2 + 1) / (5 * (256**2 - 1)))
    assert s["entropy"] == pytest.approx(np.log(256))
    assert s["zeros"] == pytest.approx(1 / 256)
    # NumPy linear percentiles of 0..255: index q/100 * 255.
    assert s["p25"] == pytest.approx(63.75 / 255)
    assert s["p50"] == pytest.approx(127.5 / 255)
    assert s["p100"] == 1.0 and s["p0"] == 0.0
    assert s["brightness"] == s["p25"] and s["darkness"] == s["p75"]


def test_checkerboard_two_levels():
    board = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.uint8) * 255
    s = whole(board[:, :, None])
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(0.5)
    assert s["skew"] == pytest.approx(0.0)
    assert s["kurtosis"] == pytest.approx(-2.0)  # two equal point masses
    assert s["entropy"] == pytest.approx(np.log(2))
    assert s["zeros"] == pytest.approx(0.5)
    assert s["p50"] == pytest.approx(0.5)  # halfway between the two middle values 0 and 1


def test_sixteen_bit_is_normalised_by_dtype_not_by_guessing():
    """A dark 16-bit image stays dark: 3000 / 65535, not 3000 / 4095 (DataEval's guessed 12 bits)."""
    pixels = np.full((3, 3, 1), 3000, np.uint16)
    pixels[0, 0, 0] = 0
    s = compute_image_stats(pixels, depth=16).image
    values = pixels.astype(np.float64).ravel() / 65535
    assert s["mean"] == pytest.approx(values.mean())
    assert s["std"] == pytest.approx(values.std())
    assert s["p100"] == pytest.approx(3000 / 65535)
    assert s["depth"] == 16
    # Entropy bins are DataEval's 256 bins of [0, 1]: 0 -> bin 0, 3000/65535 -> bin 11.
    p = np.array([1, 8]) / 9
    assert s["entropy"] == pytest.approx(-(p * np.log(p)).sum())


def test_rgba_whole_image_pools_all_channels_and_per_channel_rows_are_separate():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(7, 9, 4), dtype=np.uint8)
    result = compute_image_stats(pixels, 8)
    pooled = pixels.astype(np.float64).ravel() / 255
    assert result.image["mean"] == pytest.approx(pooled.mean())
    assert result.image["channels"] == 4
    for c in range(4):
        values = pixels[:, :, c].astype(np.float64).ravel() / 255
        assert result.channels["mean"][c] == pytest.approx(values.mean())
        assert result.channels["std"][c] == pytest.approx(values.std())
        assert result.channels["p75"][c] == pytest.approx(np.percentile(values, 75))


@pytest.mark.parametrize("dtype,levels", [(np.uint8, 255), (np.uint16, 65535)])
@pytest.mark.parametrize("channels", [1, 3])
def test_histogram_stats_equal_direct_numpy_scipy(dtype, levels, channels):
    rng = np.random.default_rng(channels)
    pixels = (rng.beta(2, 5, size=(23, 31, channels)) * levels).astype(dtype)
    s = whole(pixels, 16 if dtype == np.uint16 else 8)
    v = pixels.astype(np.float64).ravel() / levels
    assert s["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert s["var"] == pytest.approx(v.var(), rel=1e-10)
    assert s["skew"] == pytest.approx(sps.skew(v), rel=1e-9)
    assert s["kurtosis"] == pytest.approx(sps.kurtosis(v), rel=1e-9)
    hist = np.histogram(v, bins=256, range=(0, 1))[0]
    assert s["entropy"] == pytest.approx(sps.entropy(hist), rel=1e-12)
    np.testing.assert_allclose([s[f"p{q}"] for q in (0, 25, 50, 75, 100)], np.percentile(v, [0, 25, 50, 75, 100]), rtol=1e-12)
    assert s["zeros"] == pytest.approx(np.mean(pixels == 0))


def test_channel_histograms_count_every_pixel_once():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    counts = compute_channel_histograms(pixels)
    assert counts.shape == (3, 256)
    assert counts.sum(axis=1).tolist() == [30, 30, 30]
    assert counts[1, pixels[2, 3, 1]] >= 1


def test_empty_histogram_row_is_refused():
    with pytest.raises(ValueError):
        compute_histogram_stats(np.zeros((1, 256), np.int64))


@pytest.mark.parametrize(
    "width,height,expected", [(100, 100, 0.0), (200, 100, 0.5), (100, 400, -0.75), (3, 1, 2 / 3)]
)
def test_aspect_ratio_is_dataeval_signed_ratio(width, height, expected):
    assert compute_aspect_ratio(width, height) == pytest.approx(expected)


def test_grouped_statistics_equal_one_image_at_a_time():
    """compute_images_stats stacks small same-shape images; the values must not change."""
    from ood_ray.stats.image import compute_images_stats

    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    images += [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(3)]
    images += [rng.integers(0, 65536, (20, 24, 1), dtype=np.uint16), rng.integers(0, 256, (200, 150, 4), dtype=np.uint8)]
    images.insert(2, np.full((32, 32, 3), 40, np.uint8))
    depths = [16 if im.dtype == np.uint16 else 8 for im in images]
    columns = compute_images_stats(images, depths, per_channel_sharpness=True)
    for i, (image, depth) in enumerate(zip(images, depths)):
        together = columns.row(i)
        alone = compute_image_stats(image, depth, per_channel_sharpness=True)
        assert together.hash_pixels == alone.hash_pixels
        assert (together.phash, together.dhash) == (alone.phash, alone.dhash)
        for name, value in alone.image.items():
            assert together.image[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
        for name, values in alone.channels.items():
            np.testing.assert_allclose(together.channels[name], values, rtol=1e-12, atol=1e-15, err_msg=name)
