"""Our statistics against DataEval's on real images where the definitions agree.

DataEval reports visual statistics on a 0-255 display scale (ours are DataEval's / 255) and its
values are float32. 8-bit images whose maximum exceeds 1 are scaled by 255 by both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_ray.io.decode import decode_image
from ood_ray.stats.image import compute_image_stats

dataeval = pytest.importorskip("dataeval")
from dataeval.core import compute_stats  # noqa: E402
from dataeval.flags import ImageStats  # noqa: E402

REAL = sorted((Path(__file__).resolve().parents[1] / "data" / "real").glob("*.*g"))
SAME_SCALE = ("mean", "std", "var", "skew", "kurtosis", "entropy", "zeros", "missing", "contrast")
DISPLAY_SCALE = ("brightness", "darkness", "sharpness")


@pytest.fixture(scope="module")
def pairs():
    ours, chw = [], []
    for path in REAL:
        decoded = decode_image(path.read_bytes(), max_pixels=10**8)
        assert decoded.status == "ok", path
        ours.append(compute_image_stats(decoded.pixels, decoded.depth))
        chw.append(np.moveaxis(decoded.pixels, -1, 0))
    theirs = compute_stats(chw, stats=ImageStats.ALL, normalize_pixel_values=True)["stats"]
    return ours, theirs


def test_there_are_real_images():
    assert len(REAL) == 4


@pytest.mark.parametrize("name", SAME_SCALE)
def test_same_scale_statistics_agree(pairs, name):
    ours, theirs = pairs
    np.testing.assert_allclose([o.image[name] for o in ours], np.asarray(theirs[name], np.float64), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", DISPLAY_SCALE)
def test_display_scale_statistics_agree_after_scaling(pairs, name):
    ours, theirs = pairs
    np.testing.assert_allclose([o.image[name] * 255 for o in ours], np.asarray(theirs[name], np.float64), rtol=2e-5, atol=1e-4)


def test_percentiles_agree(pairs):
    ours, theirs = pairs
    mine = np.array([[o.image[f"p{q}"] for q in (0, 25, 50, 75, 100)] for o in ours]) * 255
    np.testing.assert_allclose(mine, np.asarray(theirs["percentiles"], np.float64), rtol=1e-6, atol=1e-4)


def test_geometry_agrees(pairs):
    ours, theirs = pairs
    for name in ("width", "height", "size", "channels", "aspect_ratio", "depth"):
        np.testing.assert_allclose([o.image[name] for o in ours], np.asarray(theirs[name], np.float64), err_msg=name)


@pytest.mark.parametrize("name", ("phash", "dhash"))
def test_perceptual_hashes_equal_dataeval(pairs, name):
    ours, theirs = pairs
    assert [f"{getattr(o, name):016x}" for o in ours] == list(theirs[name])


def test_channel_statistics_agree_with_dataeval_per_channel(pairs):
    ours, _ = pairs
    rgb = [p for p in REAL if Image.open(p).mode == "RGB"]
    decoded = decode_image(rgb[0].read_bytes(), max_pixels=10**8)
    theirs = compute_stats([np.moveaxis(decoded.pixels, -1, 0)], stats=ImageStats.PIXEL | ImageStats.VISUAL,
                           per_channel=True, normalize_pixel_values=True)["stats"]
    mine = compute_image_stats(decoded.pixels, 8, per_channel_sharpness=True).channels
    for name in ("mean", "std", "skew", "kurtosis", "entropy"):
        np.testing.assert_allclose(mine[name], np.asarray(theirs[name], np.float64).ravel(), rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(mine["sharpness"]) * 255, np.asarray(theirs["sharpness"], np.float64).ravel(), rtol=2e-5)
