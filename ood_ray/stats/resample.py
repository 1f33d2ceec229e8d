"""Pillow's Lanczos resize of 8-bit gray images, to the bit, as two matrix products over a stack.

The perceptual hashes resize every image's luma with Pillow (DataEval does, and the hashes are
bit-identical to DataEval's). On small images -- a 32 x 32 thumbnail to 24 x 24, or to 9 x 9 --
the resize is cheap in C, but one Pillow call per image and per hash (wrap the array, resize, copy
back) costs ~40 microseconds, more than the rest of the hashing. This module computes the same
result for a whole stack of same-shape images at once.

Pillow's resampling (``libImaging/Resample.c``) is separable and works in fixed point. For each
output pixel ``xx`` of an axis of ``in_size`` pixels resized to ``out_size``:

- ``scale = in_size / out_size``, ``filterscale = max(scale, 1)``, ``support = 3 filterscale``;
- ``center = (xx + 0.5) scale``; the taps are the input pixels ``x`` in
  ``[int(center - support + 0.5), int(center + support + 0.5))`` clipped to the image;
- their weights ``lanczos((x - center + 0.5) / filterscale)`` with
  ``lanczos(t) = sinc(t) sinc(t / 3)`` on ``[-3, 3)``, ``sinc(t) = sin(pi t) / (pi t)``, divided by
  their sum, then rounded to integers at 22 fractional bits (half away from zero);
- the output is ``clip((2^21 + sum_x pixel_x k_x) >> 22, 0, 255)``, one axis after the other, the
  first pass clipped to 8 bits: the horizontal pass first, unless the height shrinks by more than
  twice as many pixels as the width (Pillow 12 and later run the vertical pass first then; which
  rule the installed Pillow follows is read off it once, :func:`vertical_first_when_taller`).

Here the integer weights of each axis form an ``(out, in)`` matrix (computed once per size pair in
Python's ``math``, which calls the same C library as Pillow, and cached), and the two passes are
``X K_h^T`` and ``K_v X`` over the stack in float64. Every product and partial sum is an integer
below ``2^53``, so the BLAS result is exact whatever its summation order, and the shift and clip
give Pillow's bytes (tested against ``Image.resize`` on random and extreme images of many shapes).
Used for images up to :data:`MATRIX_MAX_PIXELS`; larger ones go through Pillow (dense matrices
would do far more work than its sparse taps).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2
#: Images up to this many pixels are resized by matrix products (the stacked small images).
MATRIX_MAX_PIXELS = 128 * 128


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@lru_cache(maxsize=512)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix of Pillow's fixed-point Lanczos weights (integers)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for w in taps:  # summed in order, as the C loop does (Python's sum() compensates)
            total += w
        for x, w in enumerate(taps):
            k = w / total if total != 0.0 else w
            weights[xx, xmin + x] = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
    weights.setflags(write=False)
    return weights


def _fixed_to_uint8(sums: np.ndarray) -> np.ndarray:
    """``clip((2^21 + sums) >> 22, 0, 255)`` in place (every step exact in float64)."""
    sums += float(1 << (PRECISION_BITS - 1))
    sums *= 1.0 / (1 << PRECISION_BITS)
    np.floor(sums, out=sums)
    return np.clip(sums, 0.0, 255.0, out=sums)


def _horizontal(x: np.ndarray, width: int) -> np.ndarray:
    n, rows, columns = x.shape
    return _fixed_to_uint8(x.reshape(n * rows, columns) @ lanczos_weights(columns, width).T).reshape(n, rows, width)


def _vertical(x: np.ndarray, height: int) -> np.ndarray:
    n, rows, columns = x.shape
    flat = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(n * columns, rows)  # one product for the stack
    return _fixed_to_uint8(flat @ lanczos_weights(rows, height).T).reshape(n, columns, height).transpose(0, 2, 1)


def _probe_vertical_first() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks more than
    twice as much as the width (Pillow 12 and later; before, the horizontal pass always came
    first): the order changes the rounding, so it is read off Pillow once, on a tall image."""
    from PIL import Image

    tall = np.random.default_rng(0).integers(0, 256, (1, 60, 12), dtype=np.uint8)
    want = np.asarray(Image.fromarray(tall[0]).resize((9, 9), Image.Resampling.LANCZOS))
    return bool(np.array_equal(_horizontal(_vertical(tall.astype(np.float64), 9), 9)[0], want))


@lru_cache(maxsize=1)
def vertical_first_when_taller() -> bool:
    return _probe_vertical_first()


def resize_stack(images: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N, H, W)`` uint8 images resized to ``(N, height, width)`` uint8 exactly as Pillow's
    ``Image.resize((width, height), LANCZOS)`` resizes each one (see module docstring)."""
    n, in_h, in_w = images.shape
    x = images.astype(np.float64)
    shrink_h, shrink_w = in_h - height, in_w - width
    if shrink_h > 0 and shrink_h > 2 * shrink_w and vertical_first_when_taller():
        order = (("v", height), ("h", width))
    else:
        order = (("h", width), ("v", height))
    for axis, size in order:
        if axis == "h" and size != in_w:  # Pillow's need_horizontal for a whole-image box
            x = _horizontal(x, size)
        elif axis == "v" and size != in_h:
            x = _vertical(x, size)
    return x.astype(np.uint8)
