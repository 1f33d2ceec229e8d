"""Spatial statistics: sharpness (DataEval's edge-filter definition) and the strength of the
strongest edges (``edge_p99``), both on ``[0, 1]``; and two measures of detail relative to the
image's contrast (``edge_contrast``, ``noise_ratio``) that blur and pixel noise move and a change of
exposure does not.

DataEval 1.1 (``VisualStatCalculator._sharpness`` with ``utils.preprocessing.edge_filter``):

    g     = the image on the 0-255 display scale (averaged over channels for the whole image)
    e     = clip(conv(g, K) + 0.5, 0, 255),  K = [[-1,-1,-1], [-1, 8,-1], [-1,-1,-1]]
    sharpness_dataeval = std(e)

with ``scipy.ndimage.convolve(mode="reflect")`` at the borders (half-sample symmetric: the pixel
beyond an edge is the edge pixel). We compute exactly the same quantity and report it divided by
255, so that every pixel statistic of ood-ray is on the same ``[0, 1]`` scale:

    sharpness = std(e) / 255         (so DataEval's value = ours x 255)

Display scale by dtype: ``g = k`` for 8-bit and ``g = k * 255 / 65535`` for 16-bit.

For 8-bit images the computation is exact integer arithmetic: with ``S`` the sum of the ``C``
channels (``g = S / C``), ``conv(g, K) = (9 S - box3(S)) / C`` where ``box3`` is the 3x3 sum, done
with int16 slices. ``e`` then takes one value per integer ``conv(S, K)``, so its mean and
standard deviation follow from a ``bincount`` of those integers -- about 7x faster than the
float64 filter and equal to it to rounding. 16-bit images take the float64 path
(``9 g - 9 uniform_filter(g, 3)``).

``edge_p99``: the 99th percentile of the absolute, unclipped response ``|conv(g, K)|``, over 255
(the lower empirical quantile: the smallest value that at least 99% of the pixels do not exceed),
from the same filter pass. ``sharpness`` (the standard deviation of the response) is low both
for a blurred picture and for a sharp one that is mostly flat -- a bird against an empty sky --
because it averages over every pixel. The strongest 1% of edges tell the two apart: blur softens
every edge, a flat picture with one sharp object keeps that object's edges. It is a
Laplacian-based focus measure in the family surveyed by Pertuz, Puig & Garcia, "Analysis of
focus measure operators for shape-from-focus", Pattern Recognition 46 (2013), taken as a high
percentile instead of the energy. Measured on the 10,000 CIFAR-10 test images and 5 of them
blurred (Gaussian, radius 3): the blurred ones' ``edge_p99`` is 0.03-0.10, the lowest ordinary
one 0.36 (a dark, blurry deer), the median 1.43; their ``sharpness`` 0.007-0.023 against
ordinary flat-sky pictures at 0.047 (``benchmarks/bench_lint.py``).

Relative detail, with ``s = std(g)`` the standard deviation of the same channel-mean image ``g``
over its pixels (0-255 scale; both measures are 0 for a constant image):

- ``edge_contrast = 255 edge_p99 / s``: the strongest edges per unit of contrast. ``edge_p99``
  alone also falls with exposure -- a dark, low-contrast picture has weak edges without being
  blurred -- while a gain ``a g + b`` leaves the ratio as it is; blur divides the edges much more
  than the standard deviation (the focus measures normalised by the image's own variation, e.g.
  Groen, Young & Ligthart, "A comparison of different focus functions for use in autofocus
  algorithms", Cytometry 6 (1985)).
- ``noise_ratio = sigma_n / s`` with ``sigma_n`` Immerkaer's noise estimate (J. Immerkaer, "Fast
  noise variance estimation", CVIU 64 (1996)): ``sqrt(pi / 2) / (6 (W - 2)(H - 2)) sum |conv(g,
  M)|`` over the interior, ``M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (the difference of two
  Laplacians, which cancels smooth structure). It is the share of the image's variation that sits
  at the scale of one pixel: about 1 for pixel noise, 0.02-0.4 for natural images even at 32 x 32,
  lower when blurred. ``NaN`` for images under 3 x 3 pixels (null in ``images``).

Measured on the 10,000 CIFAR-10 test images (``benchmarks/bench_lint.py``): ``edge_contrast``
2.5-26.8 (median 7.6), the 5 blurred 0.56-1.35 -- the dark deer that ``edge_p99`` puts lowest is
at 4.3 --; ``noise_ratio`` 0.016-0.39 (median 0.077), uniform noise 0.91-1.06.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import uniform_filter

_DISPLAY_MAX = 255.0
_INDEX_BUDGET = 1 << 22  # values per bincount call


def _box3_sum(x: np.ndarray) -> np.ndarray:
    """3x3 neighbourhood sums over the last two axes, half-sample symmetric borders (``reflect``)."""
    rows = np.empty_like(x)
    if x.shape[-1] == 1:
        rows[:] = 3 * x
    else:
        rows[..., 1:-1] = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
        rows[..., 0] = 2 * x[..., 0] + x[..., 1]
        rows[..., -1] = x[..., -2] + 2 * x[..., -1]
    out = np.empty_like(rows)
    if x.shape[-2] == 1:
        out[:] = 3 * rows
    else:
        out[..., 1:-1, :] = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
        out[..., 0, :] = 2 * rows[..., 0, :] + rows[..., 1, :]
        out[..., -1, :] = rows[..., -2, :] + 2 * rows[..., -1, :]
    return out


#: The percentile of ``|conv(g, K)|`` that ``edge_p99`` reports.
EDGE_PERCENTILE = 99.0


def _lower_quantile_of_counts(hist: np.ndarray, values: np.ndarray, share: float) -> np.ndarray:
    """Per row of ``hist`` (counts of ``values``, ascending): the smallest value whose cumulative
    count reaches ``share`` of the row's total (NumPy's ``inverted_cdf`` quantile)."""
    cumulative = np.cumsum(hist, axis=1)
    wanted = share * cumulative[:, -1:]
    return values[np.argmax(cumulative >= wanted - 1e-9 * cumulative[:, -1:], axis=1)]


def _edge_std_uint8(total: np.ndarray, count: int, strongest: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(std(clip(conv(total / count, K) + 0.5, 0, 255)), p99(|conv(total / count, K)|))``
    exactly, per image of ``(N, H, W)`` (the second ``None`` unless ``strongest``).

    ``total`` is the integer (int16 or int32) sum of ``count`` uint8 planes. ``conv(total, K)`` is an integer in
    ``[-8 * 255 * count, 8 * 255 * count]``; one offset ``bincount`` gives each image's
    histogram of it, and the clipped values' mean and variance, and the percentile of the
    absolute values, follow exactly.
    """
    n_images = total.shape[0]
    edges = (9 * total - _box3_sum(total)).reshape(n_images, -1)
    lowest = -8 * 255 * count
    bins = 16 * 255 * count + 1
    if edges.shape[1] < bins:
        # Fewer pixels than histogram bins: the values themselves are cheaper than their counts.
        values = np.clip(edges / count + 0.5, 0.0, _DISPLAY_MAX)
        if not strongest:
            return values.std(axis=1), None
        return values.std(axis=1), np.percentile(np.abs(edges), EDGE_PERCENTILE, axis=1, method="inverted_cdf") / count
    hist = np.zeros(n_images * bins, dtype=np.float64)
    offsets = (np.arange(n_images, dtype=np.intp) * bins - lowest)[:, None]
    # In stripes, so a huge image never holds a full-size int64 index array.
    step = max(1, _INDEX_BUDGET // max(1, n_images))
    for start in range(0, edges.shape[1], step):
        index = edges[:, start : start + step].astype(np.intp) + offsets
        hist += np.bincount(index.reshape(-1), minlength=n_images * bins)
    hist = hist.reshape(n_images, bins)
    values = np.clip((np.arange(bins) + lowest) / count + 0.5, 0.0, _DISPLAY_MAX)
    n = hist.sum(axis=1)
    mean = hist @ values / n
    std = np.sqrt(np.einsum("nk,nk->n", hist, (values[None, :] - mean[:, None]) ** 2) / n)
    if not strongest:
        return std, None
    # |value| histogram: bin k of the folded half counts the responses -k and +k
    zero = -lowest
    folded = hist[:, zero:].copy()
    folded[:, 1:] += hist[:, zero - 1::-1]
    return std, _lower_quantile_of_counts(folded, np.arange(zero + 1, dtype=np.float64), EDGE_PERCENTILE / 100) / count


def _edge_std(plane: np.ndarray, strongest: bool = True) -> tuple[float, float | None]:
    """``(std(clip(conv(plane, K) + 0.5, 0, 255)), p99(|conv(plane, K)|))`` for one float64 plane
    on the 0-255 scale (the second ``None`` unless ``strongest``)."""
    box = uniform_filter(plane, size=3, mode="reflect")
    edges = plane - box
    edges *= 9.0
    top = None
    if strongest:
        magnitude = np.abs(edges, out=box).reshape(-1)  # box's memory, no new array of the image's size
        rank = max(0, int(np.ceil(EDGE_PERCENTILE / 100 * magnitude.size)) - 1)  # the inverted_cdf quantile
        magnitude.partition(rank)
        top = float(magnitude[rank])
    edges += 0.5
    np.clip(edges, 0.0, _DISPLAY_MAX, out=edges)
    return float(edges.std()), top


def display_factor(dtype: np.dtype) -> float:
    """The factor that maps stored levels of ``dtype`` onto the 0-255 display scale."""
    if dtype == np.uint8:
        return 1.0
    if dtype == np.uint16:
        return _DISPLAY_MAX / 65535.0
    raise ValueError(f"pixel dtype must be uint8 or uint16, got {dtype}")


#: Immerkaer's normalisation ``sqrt(pi / 2) / 6`` of the mean absolute response to his mask.
_IMMERKAER = float(np.sqrt(np.pi / 2) / 6)


class SpatialStats(NamedTuple):
    """The spatial statistics of ``N`` images, one value each (``channel_sharpness``: ``N x C`` or ``None``)."""

    sharpness: np.ndarray
    channel_sharpness: np.ndarray | None
    edge_p99: np.ndarray
    edge_contrast: np.ndarray
    noise_ratio: np.ndarray


def _second_differences(x: np.ndarray) -> np.ndarray:
    """``conv(x, M)`` over the valid interior of the last two axes (``M`` is ``outer([1, -2, 1], [1, -2, 1])``)."""
    rows = x[..., :, :-2] - 2 * x[..., :, 1:-1] + x[..., :, 2:]
    return rows[..., :-2, :] - 2 * rows[..., 1:-1, :] + rows[..., 2:, :]


def _relative_detail(std: np.ndarray, mean_abs_response: np.ndarray, edge_p99: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_p99 / s, sqrt(pi/2)/6 mean|conv(g, M)| / s)`` (all on one scale), both 0 where ``s == 0``."""
    flat = std <= 0
    safe = np.where(flat, 1.0, std)
    edge_contrast = np.where(flat, 0.0, edge_p99 / safe)
    noise_ratio = np.where(flat, 0.0, _IMMERKAER * mean_abs_response / safe)
    return edge_contrast, noise_ratio


def _spread_of_totals(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(std, mean |conv(total, M)|)`` per image of the integer channel totals ``(N, H, W)``, from
    exact integer sums (``NaN`` mean response under 3 x 3 pixels)."""
    n, height, width = total.shape
    pixels = height * width
    flat_total = total.reshape(n, -1)
    s1 = flat_total.sum(axis=1, dtype=np.int64).astype(np.float64)
    s2 = np.zeros(n, dtype=np.int64)
    step = max(1, _INDEX_BUDGET // max(1, n))  # in stripes: no full-size 64-bit copy of a huge image
    for start in range(0, pixels, step):
        chunk = flat_total[:, start : start + step]
        s2 += np.einsum("ij,ij->i", chunk, chunk, dtype=np.int64)
    std = np.sqrt(np.maximum(s2.astype(np.float64) / pixels - (s1 / pixels) ** 2, 0.0))
    if height < 3 or width < 3:
        return std, np.full(n, np.nan)
    response = np.abs(_second_differences(total)).reshape(n, -1).sum(axis=1, dtype=np.int64)
    return std, response / ((height - 2) * (width - 2))


def compute_batch_spatial(stack: np.ndarray, per_channel: bool = False) -> SpatialStats:
    """Every spatial statistic of ``N`` same-shape images ``(N, H, W, C)``: sharpness on ``[0, 1]``
    (and per channel when ``per_channel``), ``edge_p99``, ``edge_contrast`` and ``noise_ratio``,
    all but the per-channel sharpness for the channel-mean image ``g``, from one channel sum.

    8-bit: exact integer arithmetic on the channel total ``S = C g`` (int16 while ``16 x 255 x C``
    fits, else int32); 16-bit: one float64 plane per image.
    """
    n, height, width, channels = stack.shape
    if stack.dtype == np.uint8:
        wide = np.int16 if 16 * 255 * channels <= np.iinfo(np.int16).max else np.int32
        total = stack[..., 0].astype(wide)
        for c in range(1, channels):
            total += stack[..., c]
        whole, strongest = _edge_std_uint8(total, channels)
        per = None
        if per_channel:
            per = whole[:, None] if channels == 1 else np.stack(
                [_edge_std_uint8(stack[..., c].astype(np.int16), 1, strongest=False)[0] for c in range(channels)],
                axis=1)
            per = per / _DISPLAY_MAX
        std, mean_abs = _spread_of_totals(total)
        # ``strongest`` is on g's 0-255 scale; S's spread and response are C times g's
        edge_contrast, noise_ratio = _relative_detail(std, mean_abs, strongest * channels)
        return SpatialStats(whole / _DISPLAY_MAX, per, strongest / _DISPLAY_MAX, edge_contrast, noise_ratio)
    factor = display_factor(stack.dtype)
    rows = np.empty((n, 4))  # sharpness, edge_p99 (0-255), std, mean |conv(g, M)|
    for i, image in enumerate(stack):
        plane = image.sum(axis=2, dtype=np.float64) * (factor / channels)
        mean_abs = np.abs(_second_differences(plane)).mean() if height >= 3 and width >= 3 else np.nan
        std = plane.std()
        rows[i] = (*_edge_std(plane), std, mean_abs)
    per = None
    if per_channel:
        per = np.array([[_edge_std(image[:, :, c].astype(np.float64) * factor, strongest=False)[0] for c in range(channels)]
                        for image in stack])
        per /= _DISPLAY_MAX
    edge_contrast, noise_ratio = _relative_detail(rows[:, 2], rows[:, 3], rows[:, 1])
    return SpatialStats(rows[:, 0] / _DISPLAY_MAX, per, rows[:, 1] / _DISPLAY_MAX, edge_contrast, noise_ratio)


def compute_sharpness(pixels: np.ndarray, per_channel: bool = False) -> tuple[float, list[float]]:
    """Sharpness of one ``(H, W, C)`` image and (optionally) of each channel, on ``[0, 1]``.

    Returns ``(whole, channels)`` with ``channels`` one value per channel, or ``[]``.
    """
    spatial = compute_batch_spatial(pixels[None], per_channel)
    per = spatial.channel_sharpness
    return float(spatial.sharpness[0]), ([] if per is None else per[0].tolist())
