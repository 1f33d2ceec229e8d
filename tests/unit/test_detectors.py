"""Detectors: one conformance test over the registry, and each score against its formula."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.special import softmax as scipy_softmax

from ood_ray.detectors import REGISTRY, NotFittedError
from ood_ray.detectors.base import Detector, Registry
from ood_ray.detectors.clf_entropy import ClassifierEntropy
from ood_ray.detectors.head import HeadDetector
from ood_ray.detectors.thresholds import QuantileThreshold

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, size=(40, 7))
MEMBERS = np.stack([scipy_softmax(RNG.normal(0, 2, size=(40, 7)), axis=1) for _ in range(3)], axis=1)
EMBEDDINGS = np.concatenate([RNG.normal(-2, 1, (30, 5)), RNG.normal(2, 1, (30, 5))])
LABELS = np.array(["a"] * 30 + ["b"] * 30)

SCORES = np.random.default_rng(2).normal(0, 1, (60, 3))
INPUT_FOR = {"logits": LOGITS, "member_probabilities": MEMBERS, "embeddings": EMBEDDINGS, "scores": SCORES}
#: The head of the detectors that use the last linear layer, and their (non-negative, post-ReLU) features.
_HEAD_RNG = np.random.default_rng(1)
HEAD = (_HEAD_RNG.normal(0, 1, (7, 5)), _HEAD_RNG.normal(0, 0.1, 7))
FEATURES = np.abs(EMBEDDINGS)


def _input(cls: type[Detector]) -> np.ndarray:
    return FEATURES if issubclass(cls, HeadDetector) else INPUT_FOR[cls.input]


def fitted(name: str) -> Detector:
    cls = REGISTRY[name]
    detector = cls(k=5) if name in ("knn", "knn_mean", "nnguide") else cls()
    if isinstance(detector, HeadDetector):
        detector.with_head(*HEAD)
    if detector.requires_fit:
        detector.fit(_input(cls), LABELS)
    return detector


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_detector_conformance(name):
    """Shape, dtype, finiteness, determinism, read-only input, state round trip, registry facts."""
    cls = REGISTRY[name]
    assert cls.name == name
    X = _input(cls).copy()
    X.setflags(write=False)
    detector = fitted(name)
    scores = detector.score(X)
    assert scores.shape == (X.shape[0],) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores))
    np.testing.assert_array_equal(scores, detector.score(X))
    state = json.loads(json.dumps(detector.state_dict()))
    np.testing.assert_allclose(cls.from_state_dict(state).score(X), scores, rtol=1e-6)
    with pytest.raises(ValueError):
        detector.score(X[0])
    if cls.requires_fit:
        with pytest.raises(NotFittedError):
            cls().score(X)


def test_knn_scores_equal_numpy_brute_force():
    reference, queries = RNG.normal(size=(200, 8)), RNG.normal(size=(30, 8))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    s = np.sort(unit(queries) @ unit(reference).T, axis=1)[:, ::-1]
    knn = REGISTRY["knn"](k=7).fit(reference)
    np.testing.assert_allclose(knn.score(queries), np.sqrt(2 - 2 * s[:, 6]), rtol=1e-5)
    # the Euclidean distance of unit vectors, not FAISS's squared one
    d = np.sort(np.linalg.norm(unit(queries)[:, None] - unit(reference)[None], axis=2), axis=1)[:, 6]
    np.testing.assert_allclose(knn.score(queries), d, rtol=1e-5)
    np.testing.assert_allclose(REGISTRY["knn_mean"](k=7).fit(reference).score(queries), (1 - s[:, :7]).mean(axis=1), rtol=1e-5)
    far = -unit(reference[:1]) * 3  # opposite of a reference point: farther than any in-distribution query
    assert knn.score(far)[0] > np.median(knn.score(reference[1:50]))


def test_registry_refuses_a_duplicate_name():
    registry = Registry()
    registry.register(REGISTRY["msp"])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(REGISTRY["msp"])


def test_logit_scores_equal_their_formulas():
    p = scipy_softmax(LOGITS, axis=1)
    np.testing.assert_allclose(REGISTRY["msp"]().score(LOGITS), 1 - p.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(REGISTRY["maxlogit"]().score(LOGITS), -LOGITS.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(REGISTRY["energy"]().score(LOGITS), -logsumexp(LOGITS, axis=1), rtol=1e-6)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(7)
    np.testing.assert_allclose(REGISTRY["entropy"]().score(LOGITS), entropy, rtol=1e-5)


def test_known_answers_for_uniform_and_confident_logits():
    uniform = np.zeros((1, 4))
    confident = np.array([[50.0, 0, 0, 0]])
    assert REGISTRY["msp"]().score(uniform)[0] == pytest.approx(0.75)
    assert REGISTRY["entropy"]().score(uniform)[0] == pytest.approx(1.0)
    assert REGISTRY["entropy"]().score(confident)[0] == pytest.approx(0.0, abs=1e-6)
    assert REGISTRY["energy"]().score(uniform)[0] == pytest.approx(-np.log(4))
    # OOD-ward = higher: the uniform prediction scores above the confident one everywhere.
    for name in ("msp", "maxlogit", "energy", "entropy"):
        assert REGISTRY[name]().score(uniform)[0] > REGISTRY[name]().score(confident)[0]


def test_ensemble_of_identical_members_is_the_single_model():
    single = scipy_softmax(LOGITS, axis=1)
    twins = np.stack([single, single], axis=1)
    np.testing.assert_allclose(REGISTRY["ensemble_entropy"]().score(twins), REGISTRY["entropy"]().score(LOGITS), rtol=1e-5)
    np.testing.assert_allclose(REGISTRY["mutual_information"]().score(twins), 0.0, atol=1e-6)


def test_disagreeing_members_have_positive_mutual_information():
    a = np.array([[0.98, 0.01, 0.01]])
    b = np.array([[0.01, 0.98, 0.01]])
    members = np.stack([a, b], axis=1)
    mean = (a + b) / 2
    h = lambda p: -(p * np.log(p)).sum() / np.log(3)  # noqa: E731
    assert REGISTRY["ensemble_entropy"]().score(members)[0] == pytest.approx(h(mean), rel=1e-5)
    assert REGISTRY["mutual_information"]().score(members)[0] == pytest.approx(h(mean) - (h(a) + h(b)) / 2, rel=1e-5)
    assert REGISTRY["mutual_information"]().score(members)[0] > 0.4


def test_clf_entropy_is_low_inside_classes_and_high_between_them():
    detector = ClassifierEntropy().fit(EMBEDDINGS, LABELS)
    inside = detector.score(np.array([[-2.0] * 5, [2.0] * 5]))
    between = detector.score(np.zeros((1, 5)))
    assert inside.max() < between.min()
    probes = detector.predict_proba(EMBEDDINGS)
    assert probes.shape == (60, 3, 2)
    np.testing.assert_allclose(probes.sum(axis=2), 1.0)
    with pytest.raises(ValueError, match="2 classes"):
        ClassifierEntropy().fit(EMBEDDINGS, np.array(["a"] * 60))


def test_clf_entropy_matches_sklearn_probabilities():
    from sklearn.linear_model import LogisticRegression

    labels = np.array(["a", "b", "c"] * 20)
    X = RNG.normal(size=(60, 4)) + np.repeat(np.eye(3, 4) * 3, 20, axis=0)[np.argsort(np.tile(np.arange(3), 20), kind="stable")]
    detector = ClassifierEntropy(c_values=(1.0,)).fit(X, labels)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    reference = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(Z, labels).predict_proba(Z)
    np.testing.assert_allclose(detector.predict_proba(X)[:, 0, :], reference, rtol=1e-6, atol=1e-9)


def test_quantile_threshold_keeps_the_stated_share_in_distribution():
    scores = np.arange(1000, dtype=float)
    threshold = QuantileThreshold(0.95).fit(scores)
    assert threshold.threshold_ == pytest.approx(np.quantile(scores, 0.95))
    assert threshold.flag(scores).mean() == pytest.approx(0.05, abs=0.002)
    assert threshold.to_dict()["n_reference"] == 1000
    with pytest.raises(ValueError):
        QuantileThreshold().fit(np.array([np.nan]))


def direct_mahalanobis(X, labels, queries):
    classes = np.unique(labels)
    means = np.stack([X[labels == c].mean(axis=0) for c in classes])
    centred = np.concatenate([X[labels == c] - means[i] for i, c in enumerate(classes)])
    precision = np.linalg.pinv(centred.T @ centred / len(X))
    d = np.stack([[(q - m) @ precision @ (q - m) for m in means] for q in queries])
    background = X.mean(axis=0)
    p0 = np.linalg.pinv((X - background).T @ (X - background) / len(X))
    d0 = np.array([(q - background) @ p0 @ (q - background) for q in queries])
    return d.min(axis=1), d.min(axis=1) - d0


def test_mahalanobis_and_rmd_equal_a_direct_numpy_computation():
    queries = RNG.normal(size=(15, 5)) * 3
    md, rmd = direct_mahalanobis(EMBEDDINGS, LABELS, queries)
    np.testing.assert_allclose(REGISTRY["mahalanobis"]().fit(EMBEDDINGS, LABELS).score(queries), md, rtol=1e-5)
    np.testing.assert_allclose(REGISTRY["rmd"]().fit(EMBEDDINGS, LABELS).score(queries), rmd, rtol=1e-4, atol=1e-4)


def test_mahalanobis_handles_a_singular_covariance_and_flags_planted_points():
    # 8 samples in 20 dimensions: the covariance has rank < 20; the pseudo-inverse keeps it finite.
    X = np.repeat(np.eye(2, 20) * 5, 4, axis=0) + RNG.normal(0, 0.1, (8, 20))
    y = np.array(["a"] * 4 + ["b"] * 4)
    detector = REGISTRY["mahalanobis"]().fit(X, y)
    inside = detector.score(X)
    planted = detector.score(X[:3] + RNG.normal(0, 3, (3, 20)) * (np.arange(20) < 8))
    assert np.isfinite(inside).all() and planted.min() > inside.max()
    rmd = REGISTRY["rmd"]().fit(EMBEDDINGS, LABELS)
    far = np.full((1, 5), 8.0)
    assert rmd.score(far)[0] > np.percentile(rmd.score(EMBEDDINGS), 95)


def test_fusion_maps_each_member_to_its_reference_cdf_and_combines():
    """Known answers: a reference row's fused score is the mean of its ranks; an image beyond every
    reference value scores 1 (mean) and one beyond a single member 1 under max; a missing member
    is left out; the state round trip is exact."""
    from ood_ray.detectors.fusion import CDFFusion

    reference = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [4.0, 40.0]])
    fusion = CDFFusion().fit(reference)
    np.testing.assert_allclose(fusion.score(reference), [(0.25 + 0.25) / 2, (0.5 + 0.75) / 2, (0.75 + 0.5) / 2, 1.0])
    np.testing.assert_allclose(fusion.score(np.array([[9.0, 99.0], [0.0, 99.0], [np.nan, 25.0], [0.0, 0.0]])),
                               [1.0, 0.5, 0.5, 0.0])
    assert CDFFusion("max").fit(reference).score(np.array([[0.0, 99.0]]))[0] == 1.0
    assert np.isnan(fusion.score(np.array([[np.nan, np.nan]]))[0])
    state = json.loads(json.dumps(fusion.state_dict()))
    np.testing.assert_array_equal(CDFFusion.from_state_dict(state).score(reference), fusion.score(reference))
    # scale-free: a member multiplied by 1000 (or shifted) fuses the same
    np.testing.assert_allclose(CDFFusion().fit(reference * [1, 1000] + [5, 0]).score(reference * [1, 1000] + [5, 0]),
                               fusion.score(reference))
