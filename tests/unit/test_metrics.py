"""OOD metrics against scikit-learn, hand-computed cases and pytorch-ood."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_ray.metrics import compute_auroc, compute_metrics

RNG = np.random.default_rng(0)


def labels(id_scores, ood_scores):
    return np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]


@pytest.mark.parametrize("seed", range(6))
def test_against_scikit_learn_including_ties(seed):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(0, 1, 300).round(1)  # rounding makes many ties
    ood_scores = rng.normal(0.8, 1.2, 120).round(1)
    m = compute_metrics(id_scores, ood_scores)
    y = labels(id_scores, ood_scores)
    s = np.r_[id_scores, ood_scores]
    assert m.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.aupr_out == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m.aupr_in == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m.tnr_at_95tpr == pytest.approx(1 - m.fpr_at_95tpr_id_positive)


def test_hand_computed_case_with_ties():
    id_scores = np.array([0.1, 0.2, 0.2, 0.3])
    ood_scores = np.array([0.2, 0.4])
    # pairs (ood > id): 0.2 beats 0.1 (1) ties two 0.2s (2 x 0.5); 0.4 beats all 4 -> (1 + 1 + 4) / 8
    assert compute_auroc(id_scores, ood_scores) == pytest.approx(6 / 8)
    m = compute_metrics(id_scores, ood_scores)
    # keeping >= 95% of ID needs every ID score kept (threshold 0.3): OOD 0.2 is kept, 0.4 is not
    assert m.fpr_at_95tpr_id_positive == pytest.approx(0.5) and m.threshold == pytest.approx(0.3)
    # flagging >= 95% of OOD needs threshold 0.2: the ID scores 0.2, 0.2, 0.3 are flagged
    assert m.fpr_at_95tpr_ood_positive == pytest.approx(3 / 4)


def test_the_two_fpr_conventions_differ_on_a_skewed_case():
    id_scores = np.r_[np.zeros(95), np.full(5, 10.0)]   # a heavy ID tail
    ood_scores = np.r_[np.full(90, 5.0), np.full(10, -1.0)]
    m = compute_metrics(id_scores, ood_scores)
    assert m.fpr_at_95tpr_id_positive == pytest.approx(0.10)  # only the OOD at -1 pass as ID
    assert m.fpr_at_95tpr_ood_positive == pytest.approx(1.00)  # catching 95% of OOD flags every ID
    assert m.fpr_at_95tpr_id_positive != m.fpr_at_95tpr_ood_positive


def test_perfect_inverted_and_constant_detectors():
    id_scores, ood_scores = RNG.normal(0, 1, 50), RNG.normal(10, 1, 40)
    perfect = compute_metrics(id_scores, ood_scores)
    assert (perfect.auroc, perfect.aupr_in, perfect.aupr_out) == (1.0, 1.0, 1.0)
    assert perfect.fpr_at_95tpr_id_positive == 0 and perfect.fpr_at_95tpr_ood_positive == 0 and perfect.detection_error == 0
    inverted = compute_metrics(ood_scores, id_scores)
    assert inverted.auroc == 0.0 and inverted.fpr_at_95tpr_id_positive == 1.0 and inverted.detection_error == 0.5
    constant = compute_metrics(np.zeros(10), np.zeros(7))
    assert constant.auroc == 0.5 and constant.fpr_at_95tpr_id_positive == 1.0 and constant.detection_error == 0.5


def test_a_missing_class_is_a_clear_error():
    with pytest.raises(ValueError, match="need in-distribution and OOD"):
        compute_metrics(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.array([np.nan, 1.0]), np.array([1.0]))


def test_agrees_with_pytorch_ood_where_both_define_the_metric():
    torch = pytest.importorskip("torch")
    ood_metrics = pytest.importorskip("pytorch_ood.metrics")
    for seed in range(4):
        rng = np.random.default_rng(seed)
        id_scores, ood_scores = rng.normal(0, 1, 400).round(2), rng.normal(1, 1, 200).round(2)
        scores = torch.tensor(np.r_[id_scores, ood_scores])
        y = torch.tensor(np.r_[np.zeros(400), -np.ones(200)]).long()  # pytorch-ood: OOD labels < 0
        theirs = ood_metrics.OODMetrics().update(scores, y).compute()
        ours = compute_metrics(id_scores, ood_scores)
        assert ours.auroc == pytest.approx(theirs["AUROC"], abs=1e-9)
        assert ours.fpr_at_95tpr_ood_positive == pytest.approx(theirs["FPR95TPR"], abs=1e-9)
