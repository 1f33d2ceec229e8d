"""The OoD Tool's classifier-ensemble score for embedders without a classifier head.

Logistic-regression classifiers with regularisation strengths ``C`` in ``{1e-5, 1, 1e5}`` (the OoD
Tool's choice) are fitted on labelled reference embeddings (standardised with the sample's mean
and standard deviation); for a new embedding their class probabilities are averaged and

    score_clf_entropy = H(mean_k p_k) / ln C

(the entropy of the averaged distribution, as in OoDAnalyzer, Chen et al. 2020). Higher = the
linear probes disagree or are unsure = more OOD. Fitting uses a bounded, stratified sample (see
:func:`ood_ray.ood_fit.stratified_sample`); scoring is a matrix product per batch, so it runs in
the distributed stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_ray.detectors.base import Detector, NotFittedError, normalized_entropy, softmax

DEFAULT_C = (1e-5, 1.0, 1e5)


class ClassifierEntropy(Detector):
    name = "clf_entropy"
    input = "embeddings"
    requires_fit = True

    def __init__(self, c_values: tuple[float, ...] = DEFAULT_C, max_iter: int = 2000, seed: int = 0) -> None:
        self.c_values = tuple(float(c) for c in c_values)
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ClassifierEntropy:
        from sklearn.linear_model import LogisticRegression

        if y is None:
            raise ValueError("clf_entropy: fit needs labels y")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"clf_entropy: needs at least 2 classes in the reference labels, got {len(classes)}")
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        Z = (X - self.mean_) / self.scale_
        self.classes_ = classes
        self.coef_, self.intercept_ = [], []
        for c in self.c_values:
            model = LogisticRegression(C=c, max_iter=self.max_iter, random_state=self.seed).fit(Z, y)
            self.coef_.append(model.coef_)
            self.intercept_.append(model.intercept_)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, K, C)`` class probabilities of each of the ``K`` fitted probes."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("clf_entropy: call fit before score")
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        members = []
        for coef, intercept in zip(self.coef_, self.intercept_):
            z = Z @ np.asarray(coef).T + np.asarray(intercept)
            if z.shape[1] == 1:  # binary: sklearn keeps one logit for the second class
                p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
                members.append(np.stack([1.0 - p1, p1], axis=1))
            else:
                members.append(softmax(z))
        return np.stack(members, axis=1)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return normalized_entropy(self.predict_proba(X).mean(axis=1))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "c_values": list(self.c_values), "max_iter": self.max_iter, "seed": self.seed}
        if hasattr(self, "coef_"):
            state.update(
                mean=self.mean_.tolist(), scale=self.scale_.tolist(), classes=[str(c) for c in self.classes_],
                coef=[np.asarray(c).tolist() for c in self.coef_], intercept=[np.asarray(i).tolist() for i in self.intercept_],
            )
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClassifierEntropy:
        Detector.from_state_dict.__func__(cls, state)
        detector = cls(tuple(state["c_values"]), state["max_iter"], state["seed"])
        if "coef" in state:
            detector.mean_ = np.asarray(state["mean"])
            detector.scale_ = np.asarray(state["scale"])
            detector.classes_ = np.asarray(state["classes"])
            detector.coef_ = [np.asarray(c) for c in state["coef"]]
            detector.intercept_ = [np.asarray(i) for i in state["intercept"]]
        return detector
