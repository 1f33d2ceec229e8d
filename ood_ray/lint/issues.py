"""Named quality issues: absolute, documented thresholds and a 0-1 score each (CleanVision-style).

Beside the relative lint (which flags what is unusual *for this dataset*), every ``ok`` image gets,
per issue, ``score_<issue>`` on ``[0, 1]`` -- higher = worse, as every score of ood-ray -- and
``is_<issue> = score_<issue> > threshold``. The measurements come from the scan
(:mod:`ood_ray.stats.quality`). Where CleanVision 0.3 (``cleanvision.issue_managers``) defines the
issue, our score is ``1 - `` its score and our threshold ``1 - `` its threshold, so the flags are
CleanVision's to the image (checked against CleanVision in the tests):

=================  ================================================  ===========  =========================
issue              score_<issue>                                     threshold    flagged when
=================  ================================================  ===========  =========================
dark               ``1 - brightness_p99``                            0.68         p99 brightness < 0.32
light              ``brightness_p5``                                 0.95         p5 brightness > 0.95
blurry             ``1 - min(1, b + s)``, ``b = 1 - exp(-0.01          0.71         CleanVision's blur
                   blurriness)``, ``s = 1 - exp(-0.01 gray_histogram              score < 0.29
                   _std)`` where that is above 0.18, else 0
low_information    ``1 - min(1, 0.1 entropy_bits)``                  0.7          entropy < 3 bits
odd_aspect_ratio   ``1 - min(w / h, h / w)``                         0.65         shorter / longer < 0.35
odd_size           ``clip(|sqrt(w) sqrt(h) - mid| / gap, 0, 1)``      0.5          outside ``[Q1 - 3 IQR,
                   (``mid``, ``gap``: centre and width of                          Q3 + 3 IQR]``
                   ``[Q1 - 3 IQR, Q3 + 3 IQR]`` of ``sqrt(w) sqrt(h)``
                   over the ``ok`` images; ``gap = 0``: ``mid``)
grayscale          ``1 - min(1, chroma / 0.05)``                     0.9          mean channel spread <
                                                                                  0.5% of the range
noisy              ``(1 - neighbour_correlation) / 2``               0.4          adjacent pixels
                                                                                  correlate below 0.2
=================  ================================================  ===========  =========================

``grayscale`` differs from CleanVision, which flags only images *stored* as one channel (mode
``L``): ours flags any image whose colour channels (nearly) coincide, so an RGB file of a gray
picture counts, and a one- or two-channel image scores 1. ``noisy`` is ours (CleanVision and DataEval
have nothing for it; a uniform-noise image passes DataEval's and CleanVision's checks): natural
images -- photos, textures, 32 x 32 thumbnails -- have adjacent-pixel correlations above about 0.35
(CIFAR-10's lowest of 10,000: 0.46), pixel noise about 0. ``odd_size`` is relative to the dataset
(CleanVision's IQR rule) and is added after the scan by the ``quality`` stage; the rest are
absolute and computed by the scan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ISSUE_SCORE_PREFIX = "score_"
ISSUE_FLAG_PREFIX = "is_"


@dataclass(frozen=True)
class QualityIssue:
    """One named issue: its score from the measurements (``{name: float64[N]}``) and default threshold."""

    name: str
    threshold: float
    score: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    #: ``True``: computed by the scan from the image alone; ``False``: needs the whole dataset
    absolute: bool = True

    @property
    def score_column(self) -> str:
        return f"{ISSUE_SCORE_PREFIX}{self.name}"

    @property
    def flag_column(self) -> str:
        return f"{ISSUE_FLAG_PREFIX}{self.name}"


def _blurry(m: dict[str, np.ndarray]) -> np.ndarray:
    blur = 1 - np.exp(-1 * m["blurriness"] * 0.01)
    flat = 1 - np.exp(-1 * m["gray_histogram_std"] * 0.01)
    flat = np.where(flat <= 0.18, 0.0, flat)
    return 1 - np.minimum(blur + flat, 1)


def _aspect(m: dict[str, np.ndarray]) -> np.ndarray:
    width, height = m["width"].astype(np.float64), m["height"].astype(np.float64)
    return 1 - np.minimum(width / height, height / width)


ISSUES: dict[str, QualityIssue] = {issue.name: issue for issue in (
    QualityIssue("dark", 0.68, lambda m: 1 - m["brightness_p99"]),
    QualityIssue("light", 0.95, lambda m: m["brightness_p5"]),
    QualityIssue("blurry", 0.71, _blurry),
    QualityIssue("low_information", 0.7, lambda m: 1 - np.minimum(1, 0.1 * m["entropy_bits"])),
    QualityIssue("odd_aspect_ratio", 0.65, _aspect),
    QualityIssue("odd_size", 0.5, None, absolute=False),
    QualityIssue("grayscale", 0.9, lambda m: 1 - np.minimum(1, m["chroma"] / 0.05)),
    QualityIssue("noisy", 0.4, lambda m: np.clip((1 - m["neighbour_correlation"]) / 2, 0, 1)),
)}
ISSUE_NAMES: tuple[str, ...] = tuple(ISSUES)
ABSOLUTE_ISSUES: tuple[str, ...] = tuple(name for name, issue in ISSUES.items() if issue.absolute)
#: Every column the named issues add to ``images``.
ISSUE_COLUMNS: tuple[str, ...] = tuple(c for issue in ISSUES.values() for c in (issue.score_column, issue.flag_column))
ODD_SIZE_IQR_FACTOR = 3.0


def absolute_scores(measures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{issue: score[N]}`` of the absolute issues (``measures``: the quality measurements plus
    ``width`` and ``height``)."""
    return {name: ISSUES[name].score(measures) for name in ABSOLUTE_ISSUES}


def odd_size_bounds(q1: float, q3: float, factor: float = ODD_SIZE_IQR_FACTOR) -> tuple[float, float]:
    """``(mid, norm)`` of CleanVision's size rule: the centre of ``[Q1 - f IQR, Q3 + f IQR]`` and
    its width (the centre itself when the width is 0)."""
    low, high = q1 - factor * (q3 - q1), q3 + factor * (q3 - q1)
    mid, gap = (low + high) / 2, high - low
    return mid, (gap if gap > 0 else mid)


def odd_size_score(area_sqrt: np.ndarray, mid: float, norm: float) -> np.ndarray:
    """``clip(|sqrt(w) sqrt(h) - mid| / norm, 0, 1)`` (CleanVision's ``1 - score``)."""
    if norm <= 0:
        return np.zeros_like(area_sqrt)
    return np.clip(np.abs(area_sqrt - mid) / norm, 0, 1)


def is_issue_column(name: str) -> bool:
    """Whether ``name`` is a named-issue or label-issue column (not an OOD score or flag)."""
    return name in ISSUE_COLUMNS or name.startswith(("score_label_issue", "is_label_issue"))
