"""All statistics and hashes of one decoded image, from one decode and one histogram pass.

Geometry (DataEval ``DimensionStatCalculator``):

- ``width``, ``height`` in pixels; ``size = width * height``; ``channels`` of the decoded array.
- ``aspect_ratio``: DataEval 1.1's signed, normalised ratio -- ``1 - height / width`` for a wide
  image (``>= 0``), ``-(1 - width / height)`` for a tall one (``< 0``), 0 for a square; it lies in
  ``(-1, 1)`` and is symmetric, so wide and tall extremes lint alike. (``width / height`` is one
  expression away in SQL.)
- ``depth``: bits per sample of the *stored* image (1 for bilevel, 8, or 16) -- read from the
  format, not guessed from the pixel maximum as DataEval does.

Pixel statistics: :mod:`ood_ray.stats.pixels`; sharpness: :mod:`ood_ray.stats.visual`; hashes:
:mod:`ood_ray.stats.hashes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ood_ray.stats.hashes import compute_dhash, compute_hash_pixels, compute_luma, compute_phash
from ood_ray.stats.pixels import HISTOGRAM_STAT_NAMES, compute_channel_histograms, compute_histogram_stats
from ood_ray.stats.visual import compute_sharpness

#: Per-image scalar statistics (the ``images`` table columns that lint looks at).
IMAGE_STAT_NAMES: tuple[str, ...] = (
    "width",
    "height",
    "size",
    "aspect_ratio",
    "channels",
    "depth",
    *HISTOGRAM_STAT_NAMES,
    "sharpness",
)

#: Per-channel statistics (the ``channels`` table columns besides ``image_id``/``channel``/``band``).
CHANNEL_STAT_NAMES: tuple[str, ...] = (*HISTOGRAM_STAT_NAMES, "sharpness")


@dataclass(frozen=True)
class ImageStats:
    """Statistics of one image: ``image`` scalars, ``channels`` lists (one entry per channel), hashes."""

    image: dict[str, float]
    channels: dict[str, list[float]]
    hash_pixels: str
    phash: int | None
    dhash: int | None


def compute_aspect_ratio(width: int, height: int) -> float:
    """DataEval's signed normalised aspect ratio (wide positive, tall negative, in ``(-1, 1)``)."""
    if width <= 0 or height <= 0:
        return float("nan")
    if height > width:
        return -(1.0 - width / height)
    return 1.0 - height / width


def compute_image_stats(pixels: np.ndarray, depth: int, per_channel_sharpness: bool = True) -> ImageStats:
    """Every statistic and hash of one ``(H, W, C)`` uint8/uint16 image.

    Parameters
    ----------
    pixels
        Decoded image; values are normalised by dtype (``/255`` or ``/65535``).
    depth
        Bits per sample of the stored image (recorded, not used for scaling).
    per_channel_sharpness
        Compute sharpness per channel too (one filter pass per channel).
    """
    height, width, channels = pixels.shape
    counts = compute_channel_histograms(pixels)
    rows = np.vstack([counts, counts.sum(axis=0, keepdims=True)]) if channels > 1 else counts
    stats = compute_histogram_stats(rows)
    whole_sharpness, channel_sharpness = compute_sharpness(pixels, per_channel=per_channel_sharpness)

    image: dict[str, float] = {
        "width": width,
        "height": height,
        "size": width * height,
        "aspect_ratio": compute_aspect_ratio(width, height),
        "channels": channels,
        "depth": depth,
    }
    for name in HISTOGRAM_STAT_NAMES:
        image[name] = float(stats[name][-1])
    image["sharpness"] = whole_sharpness

    per_channel = {name: stats[name][:channels].tolist() for name in HISTOGRAM_STAT_NAMES}
    per_channel["sharpness"] = channel_sharpness if per_channel_sharpness else [float("nan")] * channels

    luma = compute_luma(pixels)
    return ImageStats(
        image=image,
        channels=per_channel,
        hash_pixels=compute_hash_pixels(pixels),
        phash=compute_phash(luma),
        dhash=compute_dhash(luma),
    )
