"""Per-image measurements behind the named quality issues (:mod:`ood_ray.lint.issues`).

Computed in the scan from the decoded pixels, for ``N`` same-shape images at once. The first five
follow CleanVision 0.3 (``cleanvision.issue_managers.image_property``) step for step, so that its
users get its numbers; 16-bit images are first mapped to 8-bit display levels
(``round(k * 255 / 65535)``), which CleanVision does not define.

- ``brightness_p5``, ``brightness_p99``: NumPy's linear 5th and 99th percentiles over the pixels
  of the perceived brightness ``sqrt(0.241 r^2 + 0.691 g^2 + 0.068 b^2) / 255`` (Finley's HSP
  weights; channels 0-2 of an RGB(A) image), ``gray / 255`` for one- and two-channel images.
- ``blurriness``: the image scaled so that its longer side is at most 64 pixels (Pillow's
  ``Image.resize`` with its default bicubic filter and CleanVision's size rule
  ``(int(w // r), int(h // r))``, ``r = max(w, h) / 64``; smaller images are not scaled), converted
  to Pillow's ``L`` (``(19595 r + 38470 g + 7471 b + 2^15) >> 16``), filtered with Pillow's
  ``FIND_EDGES`` (the 3x3 kernel ``8 x centre - 8 neighbours``, clipped to ``[0, 255]``, the
  one-pixel border copied unfiltered) -- the square root of the variance of the filtered levels
  (Pillow's ``ImageStat``: ``(S2 - S^2 / n) / n`` from the level histogram).
- ``gray_histogram_std``: the standard deviation of the 256 counts of that ``L`` image's histogram
  (large for flat images, whose pixels sit in few levels).
- ``entropy_bits``: Pillow's ``Image.entropy()`` -- ``-sum p log2 p`` over the concatenated
  256-level histograms of all channels (768 bins for RGB).

Two more, ours:

- ``chroma``: the mean over pixels of ``(max(r, g, b) - min(r, g, b)) / 255`` (0 for one- and
  two-channel images): how far the image is from gray.
- ``neighbour_correlation``: the Pearson correlation of the luma of horizontally and of vertically
  adjacent pixels, averaged (over the central 512 x 512 pixels at most; 1 for a constant image).
  Natural images, even at 32 x 32, have correlations above about 0.4; pixel noise has about 0.
"""

from __future__ import annotations

import numpy as np

#: The quality measurements of one image, in output order.
QUALITY_MEASURES: tuple[str, ...] = ("brightness_p5", "brightness_p99", "blurriness", "gray_histogram_std",
                                     "entropy_bits", "chroma", "neighbour_correlation")

#: CleanVision's ``MAX_RESOLUTION_FOR_BLURRY_DETECTION``.
BLUR_MAX_SIDE = 64
#: The side of the central window the neighbour correlation is computed over.
CORRELATION_WINDOW = 512

_SQUARES = np.arange(256, dtype=np.int64) ** 2


def display_levels(stack: np.ndarray) -> np.ndarray:
    """``stack`` as 8-bit display levels (16-bit: ``round(k * 255 / 65535)``)."""
    if stack.dtype == np.uint8:
        return stack
    return ((stack.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def pillow_gray(stack8: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("L")`` of ``(..., H, W, C)`` uint8 pixels, as uint8 (``C >= 3``: the first
    three channels, ITU-R 601-2 weights in Pillow's 16-bit fixed point; else channel 0)."""
    if stack8.shape[-1] < 3:
        return np.ascontiguousarray(stack8[..., 0])
    red, green, blue = (stack8[..., c].astype(np.int32) for c in range(3))
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)


#: ``1000 x`` the squared perceived brightness ``0.241 r^2 + 0.691 g^2 + 0.068 b^2`` as an exact integer.
_KEY_RED, _KEY_GREEN, _KEY_BLUE = (np.uint32(w) * _SQUARES.astype(np.uint32) for w in (241, 691, 68))


def _brightness_percentiles(stack8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's linear 5th and 99th percentiles of the perceived brightness, per image.

    The order statistics are found on the exact integer ``1000 x`` squared brightness (an
    ``np.partition`` of uint32 keys: no float array over the pixels), then mapped to brightness
    and interpolated as ``np.percentile`` does; equal to CleanVision's float computation to ~1e-16."""
    from ood_ray.lint.summaries import interpolate, quantile_ranks

    n = stack8.shape[0]
    if stack8.shape[-1] >= 3:
        keys = _KEY_RED[stack8[..., 0]] + _KEY_GREEN[stack8[..., 1]] + _KEY_BLUE[stack8[..., 2]]
        to_brightness = lambda k: np.sqrt(k / 1000.0) / 255  # noqa: E731
    else:
        keys = stack8[..., 0]
        to_brightness = lambda k: k / 255.0  # noqa: E731
    keys = keys.reshape(n, -1)
    count = keys.shape[1]
    ranks = {q: quantile_ranks(count, q) for q in (0.05, 0.99)}
    wanted = sorted({r for low, high, _ in ranks.values() for r in (low, high)})
    ordered = np.partition(keys, wanted, axis=1)
    out = []
    for low, high, weight in ranks.values():
        a, b = to_brightness(ordered[:, low].astype(np.float64)), to_brightness(ordered[:, high].astype(np.float64))
        out.append(np.array([interpolate(x, y, weight) for x, y in zip(a.tolist(), b.tolist())]))
    return out[0], out[1]


def _find_edges(gray: np.ndarray) -> np.ndarray:
    """Pillow's ``FIND_EDGES`` of ``(N, H, W)`` uint8 images (border pixels copied)."""
    out = gray.astype(np.int32)
    if gray.shape[1] < 3 or gray.shape[2] < 3:
        return out
    g = out
    neighbours = (g[:, :-2, :-2] + g[:, :-2, 1:-1] + g[:, :-2, 2:] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:]
                  + g[:, 2:, :-2] + g[:, 2:, 1:-1] + g[:, 2:, 2:])
    edges = out.copy()
    edges[:, 1:-1, 1:-1] = np.clip(8 * g[:, 1:-1, 1:-1] - neighbours, 0, 255)
    return edges


def _level_histograms(levels: np.ndarray) -> np.ndarray:
    """``(N, 256)`` counts of the uint8-valued ``(N, ...)`` ``levels``."""
    n = levels.shape[0]
    flat = levels.reshape(n, -1).astype(np.intp) + (np.arange(n, dtype=np.intp) * 256)[:, None]
    return np.bincount(flat.reshape(-1), minlength=n * 256).reshape(n, 256)


def _pillow_std(histograms: np.ndarray) -> np.ndarray:
    """Pillow ``ImageStat.stddev`` of one band per row of ``(N, 256)`` level histograms:
    ``sqrt((S2 - S^2 / n) / n)`` with the integer sums ``S``, ``S2`` (exact in int64 for
    images of at most 64 x 64 pixels, as here) and the same float operations Pillow performs."""
    levels = np.arange(256, dtype=np.int64)
    counts = histograms.sum(axis=1)
    total = histograms @ levels
    total2 = histograms @ (levels * levels)
    safe = np.maximum(counts, 1)
    variance = (total2 - (total * total) / safe) / safe
    return np.where(counts > 0, np.sqrt(variance), 0.0)


def _blur_size(width: int, height: int) -> tuple[int, int] | None:
    ratio = max(width, height) / BLUR_MAX_SIDE
    if ratio <= 1:
        return None
    return max(int(width // ratio), 1), max(int(height // ratio), 1)


def _blur_gray(stack8: np.ndarray) -> np.ndarray:
    """The ``(N, h, w)`` ``L`` images the blur measure is computed on (scaled when large)."""
    height, width, channels = stack8.shape[1:]
    size = _blur_size(width, height)
    if size is None:
        return pillow_gray(stack8)
    from PIL import Image

    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels)
    out = []
    for image in stack8:
        pil = Image.fromarray(image[..., 0] if channels == 1 else image[..., :4], mode) if mode else Image.fromarray(image[..., :3], "RGB")
        out.append(np.asarray(pil.resize(size).convert("L")))
    return np.stack(out)


def _blurriness(stack8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = _blur_gray(stack8)
    edge_histograms = _level_histograms(_find_edges(gray))
    blurriness = _pillow_std(edge_histograms)
    gray_std = np.std(_level_histograms(gray), axis=1)
    return blurriness, gray_std


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Pillow's ``entropy()`` from ``(N, C, L)`` level counts (``L = 65536`` folded to display levels)."""
    n, channels, levels = counts.shape
    if levels != 256:
        bins = ((np.arange(levels, dtype=np.int64) * 255 + 32767) // 65535).astype(np.intp)
        folded = np.zeros((n, channels, 256), np.int64)
        np.add.at(folded, (slice(None), slice(None), bins), counts)
        counts = folded
    flat = counts.reshape(n, -1).astype(np.float64)
    p = flat / flat.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)


def _chroma(stack8: np.ndarray) -> np.ndarray:
    n = stack8.shape[0]
    if stack8.shape[-1] < 3:
        return np.zeros(n)
    red, green, blue = stack8[..., 0], stack8[..., 1], stack8[..., 2]
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return spread.reshape(n, -1).sum(axis=1, dtype=np.int64) / (spread[0].size * 255.0)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    x = x.reshape(n, -1).astype(np.float64)
    y = y.reshape(n, -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    denominator = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    numerator = np.einsum("ij,ij->i", x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def neighbour_correlation(luma: np.ndarray) -> np.ndarray:
    """The mean of the horizontal and vertical lag-1 Pearson correlations of ``(N, H, W)`` luma,
    over the central :data:`CORRELATION_WINDOW` pixels of each side; 1 where neither is defined
    (a constant image), the defined one where only one is."""
    height, width = luma.shape[1:]
    top, left = max(0, (height - CORRELATION_WINDOW) // 2), max(0, (width - CORRELATION_WINDOW) // 2)
    window = luma[:, top:top + CORRELATION_WINDOW, left:left + CORRELATION_WINDOW]
    both = np.stack([_pearson(window[:, :, 1:], window[:, :, :-1]) if window.shape[2] > 1 else np.full(len(luma), np.nan),
                     _pearson(window[:, 1:, :], window[:, :-1, :]) if window.shape[1] > 1 else np.full(len(luma), np.nan)])
    defined = ~np.isnan(both)
    total = np.where(defined, both, 0.0).sum(axis=0)
    count = defined.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def compute_batch_quality(stack: np.ndarray, counts: np.ndarray, luma: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`QUALITY_MEASURES` of ``N`` same-shape ``(N, H, W, C)`` uint8/uint16 images.

    ``counts``: their ``(N, C, L)`` level histograms; ``luma``: their ``(N, H, W)`` uint8 luma
    (both computed once by the scan for the other statistics)."""
    stack8 = display_levels(stack)
    p5, p99 = _brightness_percentiles(stack8)
    blurriness, gray_std = _blurriness(stack8)
    return {"brightness_p5": p5, "brightness_p99": p99, "blurriness": blurriness, "gray_histogram_std": gray_std,
            "entropy_bits": _entropy_bits(counts), "chroma": _chroma(stack8),
            "neighbour_correlation": neighbour_correlation(luma)}


def image_area_sqrt(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """CleanVision's size measure ``sqrt(w) * sqrt(h)`` (each root correctly rounded, as ``math.sqrt``)."""
    return np.sqrt(np.asarray(width, np.float64)) * np.sqrt(np.asarray(height, np.float64))
