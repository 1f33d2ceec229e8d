"""OOD detection metrics, with every convention named.

Scores are higher = more OOD. ``id_scores`` and ``ood_scores`` are the scores of the in-distribution
and the OOD images. All curves are built over the distinct score values, so tied scores move
together (as rank statistics do).

- ``auroc``: area under the ROC with OOD as positive = P(s_ood > s_id) + P(s_ood = s_id) / 2, the
  Mann-Whitney U statistic divided by ``n_id * n_ood`` (equals scikit-learn's ``roc_auc_score``).
- ``aupr_in`` / ``aupr_out``: average precision (scikit-learn's ``average_precision_score``:
  ``sum_n (R_n - R_{n-1}) P_n``, no interpolation) with ID (scores negated) / OOD as positive.
- ``fpr_at_95tpr_id_positive``: the KNN-OOD / ODIN papers' FPR95. ID is the positive class: at the
  first threshold (from the most in-distribution end) where at least 95% of the ID images are kept,
  the share of OOD images that are kept too (accepted as ID). ``tnr_at_95tpr`` (MixOE's TNR95) is
  ``1 -`` it.
- ``fpr_at_95tpr_ood_positive``: OpenOOD v1.5's and pytorch-ood's FPR95. OOD is positive: at the
  first threshold where at least 95% of the OOD images are flagged, the share of ID images flagged.
- ``detection_error``: ``min_t 0.5 (1 - TPR(t)) + 0.5 FPR(t)`` over the ROC (ODIN, Liang et al. 2018).
- ``threshold``: the score at ``fpr_at_95tpr_id_positive``'s operating point: flag ``score > threshold``.

These are different numbers; both FPR95 conventions are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr_at_95tpr_id_positive", "tnr_at_95tpr",
                "fpr_at_95tpr_ood_positive", "detection_error", "threshold")


@dataclass(frozen=True)
class OODMetrics:
    n_id: int
    n_ood: int
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_95tpr_id_positive: float
    tnr_at_95tpr: float
    fpr_at_95tpr_ood_positive: float
    detection_error: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError(f"need in-distribution and OOD scores, got {id_scores.size} ID and {ood_scores.size} OOD")
    if np.isnan(id_scores).any() or np.isnan(ood_scores).any():
        raise ValueError("scores contain NaN")
    return id_scores, ood_scores


def roc_points(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` flagging ``score >= threshold`` as positive, one point per distinct
    score from the highest down, starting at ``(0, 0)`` (threshold ``+inf``)."""
    scores = np.concatenate([positive, negative])
    is_positive = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(is_positive)[last_of_value]
    fps = np.cumsum(~is_positive)[last_of_value]
    fpr = np.r_[0.0, fps / len(negative)]
    tpr = np.r_[0.0, tps / len(positive)]
    return fpr, tpr, np.r_[np.inf, scores[last_of_value]]


def average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """scikit-learn's average precision with ``positive`` as the positive class."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(-scores, kind="mergesort")
    is_positive = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    tps = np.cumsum(is_positive)[last_of_value]
    precision = tps / (last_of_value + 1)
    recall = tps / len(positive)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def compute_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(OOD scores above ID) with ties counted half (Mann-Whitney U / (n_id n_ood))."""
    from scipy.stats import rankdata

    id_scores, ood_scores = _check(id_scores, ood_scores)
    ranks = rankdata(np.concatenate([id_scores, ood_scores]))
    u = ranks[len(id_scores):].sum() - len(ood_scores) * (len(ood_scores) + 1) / 2
    return float(u / (len(id_scores) * len(ood_scores)))


def _first_at_least(rates: np.ndarray, target: float) -> int:
    return int(np.searchsorted(rates, target - 1e-12, side="left"))


def compute_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> OODMetrics:
    """Every metric of the module docstring for one (ID, OOD) pair of score sets."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    # OOD positive (higher score = flagged).
    fpr_o, tpr_o, _ = roc_points(ood_scores, id_scores)
    fpr_ood_positive = float(fpr_o[_first_at_least(tpr_o, tpr)])
    detection_error = float(np.min(0.5 * (1.0 - tpr_o) + 0.5 * fpr_o))
    # ID positive (lower score = kept as in-distribution): flip the scores.
    fpr_i, tpr_i, thresholds_i = roc_points(-id_scores, -ood_scores)
    index = _first_at_least(tpr_i, tpr)
    fpr_id_positive = float(fpr_i[index])
    return OODMetrics(
        n_id=int(id_scores.size), n_ood=int(ood_scores.size),
        auroc=compute_auroc(id_scores, ood_scores),
        aupr_in=average_precision(-id_scores, -ood_scores),
        aupr_out=average_precision(ood_scores, id_scores),
        fpr_at_95tpr_id_positive=fpr_id_positive, tnr_at_95tpr=1.0 - fpr_id_positive,
        fpr_at_95tpr_ood_positive=fpr_ood_positive, detection_error=detection_error,
        threshold=float(-thresholds_i[index]),
    )
