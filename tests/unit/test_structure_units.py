"""Clusters, maps, drift tests, new-class detection and the autoencoder on known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ood_ray.cluster.kmeans import fit_clusters
from ood_ray.detectors.knn import l2_normalize
from ood_ray.drift.new_classes import detect_new_classes
from ood_ray.drift.tests import (
    corrected_threshold,
    cvm_test,
    ks_test,
    mann_whitney_greater,
    mmd_test,
)
from ood_ray.project.maps import fit_projections


def blobs(seed: int, k: int = 5, n: int = 200, dim: int = 24, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3.0
    X = np.concatenate([c + rng.normal(scale=spread, size=(n, dim)) for c in centers])
    return X, np.repeat(np.arange(k), n), rng


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_silhouette_picks_the_true_number_of_blobs(seed):
    from sklearn.metrics import adjusted_rand_score

    X, truth, _ = blobs(seed)
    model = fit_clusters(X, k_min=2, k_max=10, seed=seed)
    assert len(model.centroids) == 5
    cluster, _, _ = model.assign(X)
    assert adjusted_rand_score(truth, cluster) > 0.99


def test_planted_far_points_are_the_cluster_outliers():
    X, _, rng = blobs(3)
    centre = X[:200].mean(axis=0)
    planted = centre + rng.normal(size=(6, X.shape[1])) * 2.5  # same direction family, far from the blob
    model = fit_clusters(X, k=5, seed=0)
    _, _, z = model.assign(np.concatenate([X, planted]))
    assert (z[-6:] > 2.5).all()
    assert (z[:-6] > 2.5).mean() < 0.02


def test_same_seed_same_clusters_and_zscore_definition():
    X, _, _ = blobs(4)
    a, b = fit_clusters(X, k=5, seed=7), fit_clusters(X, k=5, seed=7)
    assert np.array_equal(a.centroids, b.centroids)
    cluster, distance, z = a.assign(X)
    U = l2_normalize(X)
    assert np.allclose(distance, np.linalg.norm(U - a.centroids[cluster], axis=1), atol=1e-5)
    for c in range(5):
        members = cluster == c
        assert a.mean_distance[c] == pytest.approx(distance[members].mean(), rel=1e-5)
        assert np.allclose(z[members], (distance[members] - distance[members].mean()) / distance[members].std(), atol=1e-4)


def test_hdbscan_finds_the_blobs():
    X, truth, _ = blobs(5, k=3, n=150)
    model = fit_clusters(X, method="hdbscan", min_cluster_size=20)
    assert len(model.centroids) == 3
    cluster, _, _ = model.assign(X)
    assert len(set(zip(truth.tolist(), cluster.tolist()))) == 3


def test_pca_map_equals_scikit_learn_and_tsne_covers_only_its_sample():
    from sklearn.decomposition import PCA

    X, _, _ = blobs(6, k=3, n=60)
    ids = [f"id{i}" for i in range(len(X))]
    maps = fit_projections(X, ids, ["pca", "tsne"], tsne_sample=50, perplexity=10)
    out = maps.transform(X, ids)
    expected = PCA(n_components=2).fit_transform(l2_normalize(X))
    assert np.allclose(np.stack([out["x_pca"], out["y_pca"]], axis=1), expected, atol=1e-4)
    assert np.isfinite(out["x_tsne"]).sum() == 50 and np.isnan(out["y_tsne"]).sum() == len(X) - 50


def test_umap_transforms_every_point():
    X, _, _ = blobs(7, k=3, n=60)
    maps = fit_projections(X, [str(i) for i in range(len(X))], ["umap"], umap_neighbors=10)
    out = maps.transform(X[:20], [str(i) for i in range(20)])
    assert out["x_umap"].shape == (20,) and np.isfinite(out["x_umap"]).all()


def test_no_drift_at_the_stated_false_positive_rate():
    rng = np.random.default_rng(0)
    repeats = 300
    rejected = {"ks": 0, "cvm": 0}
    for _ in range(repeats):
        a, b = rng.normal(size=400), rng.normal(size=300)
        rejected["ks"] += ks_test(a, b).p_value <= 0.05
        rejected["cvm"] += cvm_test(a, b).p_value <= 0.05
    # binomial(300, 0.05): mean 15, sd 3.8 -- allow three sd
    assert all(v <= 27 for v in rejected.values()), rejected
    mmd_rejections = sum(mmd_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), 100, seed=i).p_value <= 0.05
                         for i in range(60))
    assert mmd_rejections <= 9  # binomial(60, 0.05): mean 3, sd 1.7


def test_cramer_von_mises_with_ties_keeps_its_level():
    """Discrete statistics (``zeros``, ``p100``) tie heavily: SciPy's asymptotic formula rejected
    identical distributions at p ~ 1e-8 on real data; the permutation version must not."""
    from ood_ray.drift.tests import _cvm_tied

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(size=200)
    values, groups = np.unique(np.concatenate([a, b]), return_inverse=True)
    counts_ref = np.bincount(groups[:300], minlength=len(values))
    counts_all = np.bincount(groups, minlength=len(values))
    assert _cvm_tied(counts_ref[None, :], counts_all, 300, 200)[0] == pytest.approx(stats.cramervonmises_2samp(a, b).statistic, rel=1e-9)
    rejections = sum(cvm_test(rng.integers(0, 3, 2000).astype(float), rng.integers(0, 3, 500).astype(float), 200, seed=i).p_value <= 0.05
                     for i in range(100))
    assert rejections <= 11  # binomial(100, 0.05): mean 5, sd 2.2
    shifted = np.minimum(rng.integers(0, 3, 500) + (rng.random(500) < 0.15), 2).astype(float)
    assert cvm_test(rng.integers(0, 3, 2000).astype(float), shifted).p_value < 0.01
    # The hypergeometric draws are label permutations: the same p-value law as shuffling labels.
    x, y = rng.integers(0, 5, 400).astype(float), rng.integers(0, 5, 300).astype(float)
    pooled = np.concatenate([x, y])
    values, groups = np.unique(pooled, return_inverse=True)
    counts_all = np.bincount(groups, minlength=len(values))
    observed = _cvm_tied(np.bincount(groups[:400], minlength=len(values))[None, :], counts_all, 400, 300)[0]
    shuffled = [_cvm_tied(np.bincount(rng.permutation(groups)[:400], minlength=len(values))[None, :], counts_all, 400, 300)[0]
                for _ in range(2000)]
    by_shuffling = (1 + sum(s >= observed - 1e-12 for s in shuffled)) / 2001
    assert cvm_test(x, y, 2000, seed=1).p_value == pytest.approx(by_shuffling, abs=0.04)


def test_drift_detected_on_a_shifted_sample():
    rng = np.random.default_rng(1)
    a = rng.normal(size=2000)
    assert ks_test(a, rng.normal(0.3, 1, 2000)).p_value < 1e-6
    assert cvm_test(a, rng.normal(0, 1.4, 2000)).p_value < 1e-4
    assert mmd_test(rng.normal(size=(200, 8)), rng.normal(0.4, 1, (200, 8)), 200).p_value < 0.01
    result = mann_whitney_greater(a, a + 0.5)
    assert result.statistic > 0.6 and result.p_value < 1e-10


def test_mmd_statistic_equals_a_direct_computation():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 3)), rng.normal(0.5, 1, (12, 3))
    z = np.concatenate([x, y])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    median = np.median(d2[np.triu_indices(len(z), 1)])

    def k(a, b):
        return np.exp(-((a - b) ** 2).sum() / median)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    assert mmd_test(x, y, 10).statistic == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_corrections_lower_the_per_test_threshold_as_stated():
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    assert corrected_threshold(p, 0.05, "bonferroni") == pytest.approx(0.005)
    bh = corrected_threshold(p, 0.05, "fdr")
    assert 0.05 / len(p) <= bh <= 0.05
    # Benjamini-Hochberg rejections equal scipy's adjusted p-values <= alpha
    assert [x <= bh for x in p] == list(stats.false_discovery_control(p) <= 0.05)
    assert corrected_threshold([0.5, 0.9], 0.05, "fdr") == pytest.approx(0.025)
    with pytest.raises(ValueError, match="correction"):
        corrected_threshold(p, 0.05, "holm")


def test_new_class_detection_finds_the_planted_class_and_nothing_else():
    X, truth, rng = blobs(8, k=4, n=150)
    reference = X[truth < 3]
    new = np.concatenate([X[truth == 3][:60], X[truth == 0][:30] + rng.normal(scale=0.1, size=(30, X.shape[1]))])
    report = detect_new_classes(reference, new, k_max=8)
    assert (report.k_reference, report.k_combined) == (3, 4)
    assert len(report.new_clusters) == 1
    cluster = next(c for c in report.clusters if c[0] == report.new_clusters[0])
    assert cluster[1] == 0 and cluster[2] == 60
    same = detect_new_classes(reference, X[truth == 1][:50], k_max=8)
    assert same.k_combined == same.k_reference == 3 and not same.new_clusters


def test_reconstruction_error_is_the_mean_squared_error():
    import torch

    from ood_ray.autoencoder.model import build_autoencoder, reconstruction_error

    torch.manual_seed(0)
    model = build_autoencoder(4)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = ((model(x) - x) ** 2).mean(dim=(1, 2, 3)).numpy()
    assert np.allclose(reconstruction_error(model, pixels), expected, rtol=1e-6)


def test_finalize_rebuilds_detectors_for_each_run_settings():
    """Workers keep what they rebuilt per run: a second run's settings never get the first's."""
    import pyarrow as pa

    from ood_ray.detectors import REGISTRY
    from ood_ray.columns import EMBEDDING_PREFIX
    from ood_ray.stages.finalize import FinalizeSettings, finalize_batch

    X, labels, _ = blobs(9, k=2, n=20, dim=4)
    batch = pa.table({"image_id": [str(i) for i in range(len(X))],
                      f"{EMBEDDING_PREFIX}m": pa.array(list(X.astype(np.float32)), pa.list_(pa.float32(), 4))})
    scores = []
    for shift in (0.0, 5.0):
        detector = REGISTRY["mahalanobis"]().fit(X + shift, labels.astype(str))
        settings = FinalizeSettings(fitted={"score_mahalanobis_m": {"detector": "mahalanobis", "model": "m",
                                                                    "state": detector.state_dict()}})
        out = finalize_batch(batch, settings).column("score_mahalanobis_m").to_numpy()
        assert np.allclose(out, detector.score(X.astype(np.float32)), rtol=1e-4)
        scores.append(out)
    assert not np.allclose(scores[0], scores[1])


def test_label_shift_is_pearsons_chi_squared_with_cramers_v():
    from ood_ray.drift.tests import label_shift

    same, labels = label_shift({"a": 500, "b": 300, "c": 200}, {"a": 250, "b": 150, "c": 100})
    assert labels == ["a", "b", "c"] and same.statistic == pytest.approx(0.0, abs=1e-12) and same.p_value == pytest.approx(1.0)
    shifted, labels = label_shift({"a": 500, "b": 500}, {"a": 300, "b": 100, "new": 100})
    table = np.array([[500, 500, 0], [300, 100, 100]])
    chi2 = stats.chi2_contingency(table, correction=False)[0]
    assert labels == ["a", "b", "new"]
    assert shifted.statistic == pytest.approx(np.sqrt(chi2 / table.sum()))
    assert shifted.p_value < 1e-20


def test_small_cluster_is_found_whatever_the_sample_order():
    """k-means++ starts: four blobs of 40/40/40/15 points give k = 4 in every ordering (FAISS's
    random start found the small blob in about two of three)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 12)) * 3
    X = np.concatenate([centers[i] + rng.normal(size=(n, 12)) * 0.3 for i, n in enumerate((40, 40, 40, 15))])
    for seed in range(15):
        order = np.random.default_rng(seed).permutation(len(X))
        assert len(fit_clusters(X[order], k_max=8).centroids) == 4
