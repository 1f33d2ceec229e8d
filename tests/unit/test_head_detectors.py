"""The state-of-the-art post-hoc detectors against pytorch-ood 0.4, an independent implementation,
on the same features, head and logits: ReAct, ASH-S, SCALE, GEN, fDBD, ViM, NNGuide; and
Mahalanobis++ against its definition (Mahalanobis on L2-normalised features).

pytorch-ood computes in float32 (it casts to ``float()``); ours in float64. Scores agree to a
relative 1e-5 of their spread (the float32 rounding of logits of size ~10), except ViM, whose
float32 eigendecomposition moves the residual norm by up to ~1e-4 of it: compared at 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

from ood_ray.detectors import REGISTRY
from ood_ray.detectors.mahalanobis import Mahalanobis, RelativeMahalanobis

torch = pytest.importorskip("torch")
ood = pytest.importorskip("pytorch_ood.detector")


@pytest.fixture(scope="module")
def data():
    """ReLU features of 3 classes (64-d), a head that separates them, reference and test rows
    (test: the reference distribution plus far-off and low-norm outliers)."""
    rng = np.random.default_rng(7)
    centres = np.abs(rng.normal(0, 1.0, (3, 64))) * (rng.random((3, 64)) < 0.4) * 3
    labels = rng.integers(0, 3, 600)
    train = np.maximum(centres[labels] + rng.normal(0, 0.6, (600, 64)), 0)
    test = np.concatenate([np.maximum(centres[rng.integers(0, 3, 150)] + rng.normal(0, 0.6, (150, 64)), 0),
                           np.abs(rng.normal(0, 1.5, (60, 64))), np.abs(rng.normal(0, 0.2, (40, 64)))])
    weight = rng.normal(0, 0.3, (3, 64)) + 0.5 * (centres - centres.mean(axis=0)) / 3
    bias = rng.normal(0, 0.2, 3)
    return {"train": train, "labels": labels, "test": test, "weight": weight, "bias": bias}


def _head(data):
    layer = torch.nn.Linear(64, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(data["weight"], dtype=torch.float32))
        layer.bias.copy_(torch.tensor(data["bias"], dtype=torch.float32))
    return layer


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _ours(name, data, **params):
    detector = REGISTRY[name](**params)
    if hasattr(detector, "with_head"):
        detector.with_head(data["weight"], data["bias"])
    if detector.requires_fit:
        detector.fit(data["train"], data["labels"])
    return detector.score(data["test"]).astype(np.float64)


def _agree(ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-5) -> None:
    spread = float(np.ptp(theirs)) or 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * spread)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99999


def _maps(x: np.ndarray) -> torch.Tensor:
    """Pooled features as pytorch-ood's 4-D feature maps ``B x C x 1 x 1``."""
    return _t(x)[:, :, None, None]


def test_react_equals_pytorch_ood(data):
    head = _head(data)
    theirs = ood.ReAct(backbone=lambda x: x, head=lambda m: head(m.flatten(1)), percentile=0.9)
    theirs.fit_feature_maps(_maps(data["train"]), torch.tensor(data["labels"]))
    scores = theirs.predict(_maps(data["test"])).detach().numpy()
    ours = REGISTRY["react"](0.9).with_head(data["weight"], data["bias"]).fit(data["train"])
    assert ours.threshold_ == pytest.approx(theirs.threshold, rel=1e-6)
    _agree(ours.score(data["test"]), scores)


@pytest.mark.parametrize("percentile", [0.65, 0.9])
def test_ash_s_equals_pytorch_ood(data, percentile):
    head = _head(data)
    theirs = ood.ASH(backbone=lambda x: x, head=lambda m: head(m.flatten(1)), variant="ash-s", percentile=percentile)
    _agree(_ours("ash", data, percentile=percentile), theirs.predict(_maps(data["test"])).detach().numpy())


@pytest.mark.parametrize("percentile", [0.65, 0.85])
def test_scale_equals_pytorch_ood(data, percentile):
    head = _head(data)
    theirs = ood.SCALE(backbone=lambda x: x, head=lambda m: head(m.flatten(1)), percentile=percentile)
    _agree(_ours("scale", data, percentile=percentile), theirs.predict(_maps(data["test"])).detach().numpy())


@pytest.mark.parametrize("top", [2, 100])
def test_gen_equals_pytorch_ood(data, top):
    logits = data["test"] @ data["weight"].T + data["bias"]
    # float64 in: pytorch-ood clamps p to 1 - 1e-7, which float32 rounds to 1 - 1.19e-7 (a 1% change of the score)
    theirs = ood.GEN.score(torch.tensor(logits, dtype=torch.float64), gamma=0.1, M=top if top < 3 else None).numpy()
    ours = REGISTRY["gen"](0.1, top).score(logits).astype(np.float64)
    _agree(ours, theirs)


def test_fdbd_equals_pytorch_ood(data):
    theirs = ood.fDBD(encoder=lambda x: x, head=_head(data)).fit_features(_t(data["train"]))
    _agree(_ours("fdbd", data), theirs.predict_features(_t(data["test"])).detach().numpy())


def test_vim_equals_pytorch_ood(data):
    theirs = ood.ViM(encoder=lambda x: x, d=32, w=_t(data["weight"]), b=_t(data["bias"]))
    theirs.fit_features(_t(data["train"]), torch.tensor(data["labels"]))
    _agree(_ours("vim", data, dimension=32), theirs.predict_features(_t(data["test"])).detach().numpy(), rtol=1e-4)


def test_nnguide_equals_pytorch_ood(data):
    theirs = ood.NNGuide(encoder=lambda x: x, head=_head(data), k=10)
    theirs.fit_features(_t(data["train"]), torch.tensor(data["labels"]))
    _agree(_ours("nnguide", data, k=10), theirs.predict_features(_t(data["test"])).detach().numpy())


def test_mahalanobis_pp_is_mahalanobis_on_normalised_features(data):
    normalised = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in data.items() if k in ("train", "test")}
    for plus, plain in (("mahalanobis_pp", Mahalanobis), ("rmd_pp", RelativeMahalanobis)):
        expected = plain().fit(normalised["train"], data["labels"]).score(normalised["test"])
        np.testing.assert_allclose(_ours(plus, data), expected, rtol=1e-6)


def test_outliers_score_higher_than_inliers_for_every_head_detector(data):
    """A known answer: on these features each new score ranks the planted outliers (the last 100
    test rows) above the in-distribution ones on average."""
    for name in ("react", "ash", "scale", "fdbd", "vim", "nnguide", "gen", "mahalanobis_pp", "rmd_pp"):
        if name == "gen":
            scores = REGISTRY["gen"]().score(data["test"] @ data["weight"].T + data["bias"])
        else:
            scores = _ours(name, data)
        assert scores[150:].mean() > scores[:150].mean(), name
