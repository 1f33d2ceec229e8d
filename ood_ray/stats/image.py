"""All statistics and hashes of one decoded image, from one decode and one histogram pass.

Geometry (DataEval ``DimensionStatCalculator``):

- ``width``, ``height`` in pixels; ``size = width * height``; ``channels`` of the decoded array.
- ``aspect_ratio``: DataEval 1.1's signed, normalised ratio -- ``1 - height / width`` for a wide
  image (``>= 0``), ``-(1 - width / height)`` for a tall one (``< 0``), 0 for a square; it lies in
  ``(-1, 1)`` and is symmetric, so wide and tall extremes lint alike. (``width / height`` is one
  expression away in SQL.)
- ``depth``: bits per sample of the *stored* image (1 for bilevel, 8, or 16) -- read from the
  format, not guessed from the pixel maximum as DataEval does.

Pixel statistics: :mod:`ood_ray.stats.pixels`; sharpness, edges and relative detail:
:mod:`ood_ray.stats.visual`; hashes:
:mod:`ood_ray.stats.hashes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ood_ray.stats.centre import CROP_COLUMN, compute_batch_centre_hashes
from ood_ray.stats.d4 import D4_COLUMNS, D4_METHODS, compute_batch_all_hashes
from ood_ray.stats.hashes import compute_hash_pixels, compute_luma
from ood_ray.stats.quality import QUALITY_MEASURES, compute_batch_quality
from ood_ray.stats.pixels import (
    HISTOGRAM_STAT_NAMES,
    compute_batch_histograms,
    compute_channel_histograms,
    compute_histogram_stats,
)
from ood_ray.stats.visual import compute_batch_spatial

#: The hash columns besides ``phash``/``dhash`` (``StatsColumns.d4``): the D4 hashes and the centre hashes.
EXTRA_HASH_COLUMNS = (*D4_COLUMNS, CROP_COLUMN)

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
    "edge_p99",
    "edge_contrast",
    "noise_ratio",
)

_INTEGER_STATS = {"width", "height", "size", "channels", "depth"}

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
    d4: dict[str, int | None] | None = None


@dataclass
class StatsColumns:
    """Statistics of ``N`` images as columns: what the scan writes, without per-image objects.

    ``image[name]`` is ``float64[N]`` (integers for geometry); ``channels[name][i]`` is image
    ``i``'s list with one value per channel (``None`` where not computed).
    """

    image: dict[str, np.ndarray]
    channels: dict[str, list[list[float | None]]]
    hash_pixels: list[str]
    phash: list[int | None]
    dhash: list[int | None]
    #: ``phash_d4``, ``phash_d4_orient``, ``dhash_d4``, ``dhash_d4_orient`` (see ood_ray.stats.d4) and
    #: ``phash_crop`` (a list per image, see ood_ray.stats.centre)
    d4: dict[str, list[int | None]] = None  # type: ignore[assignment]
    #: the quality measurements (see ood_ray.stats.quality), ``float64[N]`` each; empty when not computed
    quality: dict[str, np.ndarray] = None  # type: ignore[assignment]

    def row(self, i: int) -> ImageStats:
        """Image ``i`` as an :class:`ImageStats`."""
        image = {name: (int(v[i]) if v.dtype.kind in "iu" else float(v[i])) for name, v in self.image.items()}
        channels = {name: values[i] for name, values in self.channels.items()}
        return ImageStats(image, channels, self.hash_pixels[i], self.phash[i], self.dhash[i],
                          {name: values[i] for name, values in (self.d4 or {}).items()})


def compute_aspect_ratio(width: int, height: int) -> float:
    """DataEval's signed normalised aspect ratio (wide positive, tall negative, in ``(-1, 1)``)."""
    if width <= 0 or height <= 0:
        return float("nan")
    if height > width:
        return -(1.0 - width / height)
    return 1.0 - height / width


#: Images with at most this many pixels are stacked by shape and computed together.
SMALL_IMAGE_PIXELS = 128 * 128


def _group_by_shape(pixels: list[np.ndarray]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, array in enumerate(pixels):
        small = array.shape[0] * array.shape[1] <= SMALL_IMAGE_PIXELS
        key = (array.shape, array.dtype.str) if small else ("single", i)
        groups.setdefault(key, []).append(i)
    return groups


def _stats_of_group(stack: np.ndarray, depths: list[int], per_channel_sharpness: bool,
                    d4_hashes: tuple[str, ...] = D4_METHODS, quality: bool = True,
                    crop_scales: tuple[float, ...] = ()) -> StatsColumns:
    n, height, width, channels = stack.shape
    if n == 1 or stack.dtype != np.uint8:
        counts = np.stack([compute_channel_histograms(image) for image in stack])
    else:
        counts = compute_batch_histograms(stack)
    levels = counts.shape[2]
    rows = counts.reshape(n * channels, levels)
    if channels > 1:
        rows = np.vstack([rows, counts.sum(axis=1)])
    stats = compute_histogram_stats(rows)
    spatial = compute_batch_spatial(stack, per_channel_sharpness)
    luma = compute_luma(stack)
    phashes, dhashes, d4 = compute_batch_all_hashes(luma, d4_hashes)
    d4[CROP_COLUMN] = compute_batch_centre_hashes(luma, crop_scales) if crop_scales else [None] * n
    measures = compute_batch_quality(stack, counts, luma) if quality else {}

    whole = slice(n * channels, None) if channels > 1 else slice(None)
    image: dict[str, np.ndarray] = {
        "width": np.full(n, width, np.int64),
        "height": np.full(n, height, np.int64),
        "size": np.full(n, width * height, np.int64),
        "aspect_ratio": np.full(n, compute_aspect_ratio(width, height)),
        "channels": np.full(n, channels, np.int64),
        "depth": np.asarray(depths, np.int64),
    }
    per_channel: dict[str, list] = {}
    for name in HISTOGRAM_STAT_NAMES:
        image[name] = stats[name][whole]
        per_channel[name] = stats[name][: n * channels].reshape(n, channels).tolist()
    for name in ("sharpness", "edge_p99", "edge_contrast", "noise_ratio"):
        image[name] = getattr(spatial, name)
    per_channel["sharpness"] = (spatial.channel_sharpness.tolist() if spatial.channel_sharpness is not None
                                else [[None] * channels] * n)
    return StatsColumns(image=image, channels=per_channel, hash_pixels=[compute_hash_pixels(x) for x in stack],
                        phash=phashes, dhash=dhashes, d4=d4, quality=measures)


def compute_images_stats(
    pixels: list[np.ndarray], depths: list[int], per_channel_sharpness: bool = False,
    d4_hashes: tuple[str, ...] = D4_METHODS, quality: bool = True, crop_scales: tuple[float, ...] = (),
) -> StatsColumns:
    """Every statistic and hash of several ``(H, W, C)`` uint8/uint16 images, in input order.

    Small images of one shape and dtype are stacked and computed together (one histogram call,
    one filter pass, one DCT for the whole group): at 32 x 32 the per-call overhead of NumPy
    otherwise costs several times the decode. Larger images are computed one at a time.
    The values are identical either way.
    """
    n = len(pixels)
    out = StatsColumns(
        image={name: np.zeros(n, np.int64 if name in _INTEGER_STATS else np.float64) for name in IMAGE_STAT_NAMES},
        channels={name: [None] * n for name in CHANNEL_STAT_NAMES},
        hash_pixels=[""] * n, phash=[None] * n, dhash=[None] * n, d4={name: [None] * n for name in EXTRA_HASH_COLUMNS},
        quality={name: np.full(n, np.nan) for name in QUALITY_MEASURES} if quality else {},
    )
    for indices in _group_by_shape(pixels).values():
        stack = np.stack([pixels[i] for i in indices])
        group = _stats_of_group(stack, [depths[i] for i in indices], per_channel_sharpness, d4_hashes, quality,
                                crop_scales)
        for name, values in group.image.items():
            out.image[name][indices] = values
        for name, values in group.quality.items():
            out.quality[name][indices] = values
        for name, lists in group.channels.items():
            for i, value in zip(indices, lists):
                out.channels[name][i] = value
        for i, k in zip(indices, range(len(indices))):
            out.hash_pixels[i], out.phash[i], out.dhash[i] = group.hash_pixels[k], group.phash[k], group.dhash[k]
            for name in EXTRA_HASH_COLUMNS:
                out.d4[name][i] = group.d4[name][k]
    return out


def compute_image_stats(pixels: np.ndarray, depth: int, per_channel_sharpness: bool = False) -> ImageStats:
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
    return _stats_of_group(pixels[None], [depth], per_channel_sharpness).row(0)
