"""Spatial statistic: sharpness (DataEval's edge-filter definition, reported on ``[0, 1]``).

DataEval 1.1 (``VisualStatCalculator._sharpness`` with ``utils.preprocessing.edge_filter``):

    g     = the image on the 0-255 display scale (averaged over channels for the whole image)
    e     = clip(conv(g, K) + 0.5, 0, 255),  K = [[-1,-1,-1], [-1, 8,-1], [-1,-1,-1]]
    sharpness_dataeval = std(e)

with ``scipy.ndimage.convolve(mode="reflect")`` at the borders. We compute the same quantity,
using ``conv(g, K) = 9 g - 9 box3(g)`` (``box3`` is the 3x3 mean, same reflect borders), which
needs one separable filter instead of a 9-tap convolution, and report it divided by 255 so that
every pixel statistic of ood-ray is on the same ``[0, 1]`` scale:

    sharpness = std(e) / 255         (so DataEval's value = ours x 255)

Display scale by dtype: ``g = k`` for 8-bit and ``g = k * 255 / 65535`` for 16-bit.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

_DISPLAY_MAX = 255.0


def _edge_std(plane: np.ndarray) -> float:
    """``std(clip(conv(plane, K) + 0.5, 0, 255))`` for one float64 plane on the 0-255 scale."""
    box = uniform_filter(plane, size=3, mode="reflect")
    edges = plane - box
    edges *= 9.0
    edges += 0.5
    np.clip(edges, 0.0, _DISPLAY_MAX, out=edges)
    return float(edges.std())


def display_factor(dtype: np.dtype) -> float:
    """The factor that maps stored levels of ``dtype`` onto the 0-255 display scale."""
    if dtype == np.uint8:
        return 1.0
    if dtype == np.uint16:
        return _DISPLAY_MAX / 65535.0
    raise ValueError(f"pixel dtype must be uint8 or uint16, got {dtype}")


def compute_sharpness(pixels: np.ndarray, per_channel: bool = True) -> tuple[float, list[float]]:
    """Sharpness of the channel-mean image and (optionally) of each channel, on ``[0, 1]``.

    Parameters
    ----------
    pixels
        ``(H, W, C)`` uint8 or uint16 image.
    per_channel
        Also compute one value per channel (one more filter pass per channel).

    Returns
    -------
    (whole, channels)
        ``whole`` for the channel-mean image; ``channels`` one value per channel, or ``[]``.
    """
    factor = display_factor(pixels.dtype)
    channels = pixels.shape[2]
    if channels == 1:
        plane = pixels[:, :, 0].astype(np.float64)
        if factor != 1.0:
            plane *= factor
        whole = _edge_std(plane) / _DISPLAY_MAX
        return whole, ([whole] if per_channel else [])
    gray = pixels.sum(axis=2, dtype=np.float64)
    gray *= factor / channels
    whole = _edge_std(gray) / _DISPLAY_MAX
    if not per_channel:
        return whole, []
    per = []
    for c in range(channels):
        plane = pixels[:, :, c].astype(np.float64)
        if factor != 1.0:
            plane *= factor
        per.append(_edge_std(plane) / _DISPLAY_MAX)
    return whole, per
