"""The stacked Lanczos resize equals Pillow's byte for byte, and the hashes built on it DataEval's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ood_ray.stats.hashes import compute_luma
from ood_ray.stats.image import compute_images_stats
from ood_ray.stats.resample import lanczos_weights, resize_stack


def pillow(images: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x).resize((width, height), Image.Resampling.LANCZOS)) for x in images])


@settings(max_examples=300, deadline=None)
@given(height=st.integers(9, 128), width=st.integers(9, 128), out_w=st.integers(8, 40), out_h=st.integers(8, 40),
       kind=st.sampled_from(["uniform", "binary", "normal", "constant"]), seed=st.integers(0, 2**31))
def test_the_stacked_resize_equals_pillow_to_the_byte(height, width, out_w, out_h, kind, seed):
    rng = np.random.default_rng(seed)
    shape = (3, height, width)
    images = {"uniform": lambda: rng.integers(0, 256, shape, dtype=np.uint8),  # overshoots clip at 0 and 255
              "binary": lambda: (rng.random(shape) > 0.5).astype(np.uint8) * 255,
              "normal": lambda: np.clip(rng.normal(128, 50, shape), 0, 255).astype(np.uint8),
              "constant": lambda: np.full(shape, int(rng.integers(0, 256)), np.uint8)}[kind]()
    assert np.array_equal(resize_stack(images, out_w, out_h), pillow(images, out_w, out_h))


@pytest.mark.parametrize("size", [(32, 32, 24, 24), (32, 32, 9, 9), (28, 28, 24, 24), (120, 20, 16, 16), (20, 120, 16, 16)])
def test_hash_sizes_and_tall_and_wide_images_equal_pillow(size):
    height, width, out_w, out_h = size
    images = np.random.default_rng(7).integers(0, 256, (5, height, width), dtype=np.uint8)
    assert np.array_equal(resize_stack(images, out_w, out_h), pillow(images, out_w, out_h))


def test_weights_are_pillows_fixed_point_rows():
    weights = lanczos_weights(32, 24)
    assert weights.shape == (24, 32) and np.all(weights == np.round(weights))
    # each row sums to about 2^22 (rounded per tap), and upscaling keeps 6 taps a pixel at most
    assert np.all(np.abs(weights.sum(axis=1) - 2**22) <= weights.shape[1])
    assert np.count_nonzero(lanczos_weights(16, 40), axis=1).max() <= 6


def test_small_image_hashes_equal_dataeval():
    dataeval_hash = pytest.importorskip("dataeval.core._hash")
    rng = np.random.default_rng(3)
    images = [np.clip(rng.normal(120, 60, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    images += [np.clip(rng.normal(120, 60, (40, 24, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    for image in images:
        stats = compute_images_stats([image, image], [8, 8])  # a stack: the matrix path
        chw = np.moveaxis(image, -1, 0)
        assert f"{stats.phash[0]:016x}" == dataeval_hash._phash(chw)[0]
        assert f"{stats.dhash[0]:016x}" == dataeval_hash._dhash(chw)[0]
    assert compute_luma(images[0]).dtype == np.uint8
