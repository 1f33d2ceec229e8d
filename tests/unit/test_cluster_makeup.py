"""Table ``clusters`` from per-part summaries (:mod:`ood_ray.cluster.makeup`): the same table to
the bit for any split of the images into parts, and each value against a direct computation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from ood_ray.cluster.makeup import SCHEMA, clusters_table
from ood_ray.parts import LocalParts


def _images(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cluster = rng.choice([0, 1, 3], n, p=[0.6, 0.3, 0.1])  # cluster 2: nobody; 3: its labels tie
    label = np.where(cluster == 0, "cat", np.where(rng.random(n) < 0.8, "dog", "cat"))
    label = label.astype(object)
    label[cluster == 3] = np.where(np.arange((cluster == 3).sum()) % 2, "b", "a")
    label[rng.random(n) < 0.1] = None
    return pa.table({
        "image_id": [f"{i:032x}" for i in rng.permutation(n)],
        "cluster": pa.array(np.where(rng.random(n) < 0.05, -1, cluster), pa.int32()).cast(pa.int32()),
        "cluster_distance": rng.gamma(2.0, 0.1, n) * 1e3 + 1e-7,
        "is_cluster_outlier": rng.random(n) < 0.07,
        "label": label.tolist(),
        "split": rng.choice(["train", "test", None], n).tolist(),
    })


def _with_unassigned(table: pa.Table) -> pa.Table:
    """Cluster -1 above stands for images without a cluster (null)."""
    cluster = table.column("cluster")
    return table.set_column(1, "cluster", pa.compute.if_else(pa.compute.equal(cluster, -1), None, cluster))


def _split(table: pa.Table, parts: int, seed: int) -> LocalParts:
    order = np.random.default_rng(seed).permutation(table.num_rows)
    table = table.take(order)
    cuts = sorted(np.random.default_rng(seed + 1).integers(0, table.num_rows + 1, parts - 1).tolist())
    return LocalParts([table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, table.num_rows])])


FIT = (np.array([0.9, 0.8, 0.7, 0.95]), np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.1, 0.2, 0.3, 0.4]))


@pytest.mark.parametrize("parts,seed", [(3, 1), (11, 2), (40, 3)])
def test_the_table_is_the_same_for_any_split(parts, seed):
    table = _with_unassigned(_images(4000))
    assert clusters_table(_split(table, parts, seed), *FIT).equals(clusters_table(LocalParts([table]), *FIT))


def test_values_against_a_direct_computation():
    table = _with_unassigned(_images(3000, seed=5))
    got = clusters_table(_split(table, 7, 0), *FIT)
    assert got.schema == SCHEMA
    rows = {r["cluster"]: r for r in got.to_pylist()}
    assert sorted(rows) == [0, 1, 2, 3]
    cluster = np.asarray(table.column("cluster").to_pylist(), dtype=object)
    for c in (0, 1, 3):
        members = table.filter(pa.array(cluster == c))
        d = members.column("cluster_distance").to_numpy()
        r = rows[c]
        assert r["size"] == members.num_rows
        assert r["mean_distance"] == float(sum(map(Fraction, d.tolist())) / len(d))  # exact sum, rounded once
        assert r["std_distance"] == pytest.approx(d.std(), rel=1e-12)
        assert r["outliers"] == int(np.sum(members.column("is_cluster_outlier").to_numpy(zero_copy_only=False)))
        labels = [x for x in members.column("label").to_pylist() if x is not None]
        assert dict(r["labels"]) == {x: labels.count(x) for x in set(labels)}
        splits = [x or "" for x in members.column("split").to_pylist()]
        assert dict(r["splits"]) == {x: splits.count(x) for x in set(splits)}
        assert r["n_labels"] == len(set(labels))
        best = max(labels.count(x) for x in set(labels))
        assert r["majority_label"] == min(x for x in set(labels) if labels.count(x) == best)
        assert r["purity"] == best / len(labels)
        assert (r["centroid_norm"], r["fit_mean_distance"], r["fit_std_distance"]) == tuple(float(f[c]) for f in FIT)
    assert rows[2]["size"] == 0 and rows[2]["mean_distance"] is None and rows[2]["labels"] is None
    assert rows[2]["majority_label"] is None and rows[2]["purity"] is None
    # cluster 3's labels tie more often than not at 50/50; the smallest label wins a tie
    assert rows[3]["majority_label"] in ("a", "b")
