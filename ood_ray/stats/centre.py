"""Crop-tolerant perceptual hashes: ``phash_crop``, the ``phash`` of the image's own centre at a few
scales.

Cutting a few per cent off every side of an image moves its ``phash`` by 8-20 of 64 bits (median 14
on 32-px images of the duplicate benchmark), as far as some distinct images sit, so no distance
threshold on the plain hash finds crops without linking distinct images. But a centred crop *is*
the image's centre: if ``c`` is ``x`` cut by a share ``a`` on each side, then ``phash(c)`` equals, up
to resampling, ``phash(centre_s(x))`` with ``s = 1 - 2a``. So each image also gets the hashes of its
centre at the scales ``dedup.crop_scales`` (default 0.94, 0.88, 0.82: 3, 6 and 9 per cent off each
side), and a pair of images is a crop pair when the full ``phash`` of one is within
``dedup.near_distance`` bits of a centre hash of the other (the join is
:mod:`ood_ray.dedup.hash_groups`; centre hashes are only compared with full hashes, never with each
other). Neighbouring scales overlap: on the duplicate benchmark three scales find 98-99% of crops
cutting 2, 5, 8 or 10% off each side within 4 bits (one scale, 0.9, finds only crops of its own
size: 16-20% of the others at 32 px, where a crop is a whole number of pixels).

The centre at scale ``s`` of an ``H x W`` image is rows ``[dy, H - dy)`` and columns ``[dx, W - dx)``
with ``dy = round(H (1 - s) / 2)``, ``dx = round(W (1 - s) / 2)``; a scale that removes nothing
(images under ~17 px) or leaves less than 9 px on a side gives no hash (``None``), like a constant
centre. Crops off one side or a corner (not centred) are not found: their content is off-centre.
"""

from __future__ import annotations

import numpy as np

from ood_ray.stats.hashes import as_optional, phash_values, resized_for_hashes

#: The near method searching these hashes, and the ``images`` column holding them.
CROP_METHOD = "phash_crop"
CROP_COLUMN = "phash_crop"


def centre_box(height: int, width: int, scale: float) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the centre at ``scale`` (see module docstring)."""
    dy, dx = round(height * (1 - scale) / 2), round(width * (1 - scale) / 2)
    return dy, dx, height - dy, width - dx


def compute_batch_centre_hashes(lumas: np.ndarray, scales: tuple[float, ...]) -> list[list[int | None] | None]:
    """Per image of ``(N, H, W)`` uint8 lumas, the ``phash`` of its centre at each of ``scales`` (one
    Lanczos resize per image and scale, one DCT batch per scale); ``None`` for an image that has no
    centre hash at any scale."""
    n, height, width = lumas.shape
    columns: list[list[int | None]] = []
    for scale in scales:
        top, left, bottom, right = centre_box(height, width, scale)
        resized = None
        if (top or left) and bottom - top > 0 and right - left > 0:
            resized = resized_for_hashes(np.ascontiguousarray(lumas[:, top:bottom, left:right]), ("phash",))
        columns.append([None] * n if resized is None else as_optional(*phash_values(resized[0])))
    rows = [list(values) for values in zip(*columns)] if columns else [[] for _ in range(n)]
    return [row if any(v is not None for v in row) else None for row in rows]
