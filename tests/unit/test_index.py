"""Sharded search is exact; IVF recall; the index plan; leave-one-out."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ood_ray.detectors.knn import l2_normalize
from ood_ray.index.planner import plan_index, train_template
from ood_ray.index.shards import IndexShard
from ood_ray.index.topk import drop_self, merge_topk

RNG = np.random.default_rng(0)
DIM = 24


def ids_for(n: int, offset: int = 0) -> np.ndarray:
    return np.asarray([f"{i + offset:032x}" for i in range(n)], dtype="S32")


def sharded_search(vectors: np.ndarray, sizes: list[int], queries: np.ndarray, k: int, template: bytes | None = None):
    assert sum(sizes) == len(vectors)
    shards, start = [], 0
    for size in sizes:
        shard = IndexShard(nprobe=16)
        shard.add_model("m", DIM, template)
        if size:
            shard.add("m", vectors[start : start + size], ids_for(size, start))
        shards.append(shard)
        start += size
    return merge_topk([shard.search("m", queries, k)[0] for shard in shards], k)


@pytest.mark.parametrize("sizes", [[500], [250, 250], [100, 300, 100], [0, 420, 80], [1, 1, 498], [3, 0, 497, 0]])
def test_sharded_exact_search_equals_one_index_and_brute_force(sizes):
    vectors = l2_normalize(RNG.normal(size=(500, DIM)))
    queries = l2_normalize(RNG.normal(size=(40, DIM)))
    sims, ids = sharded_search(vectors, sizes, queries, 10)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    ref_sims, ref_pos = index.search(queries, 10)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    assert (ids == ids_for(500)[ref_pos]).all()
    brute = queries @ vectors.T
    order = np.argsort(-brute, axis=1)[:, :10]
    assert (ids == ids_for(500)[order]).all()
    np.testing.assert_allclose(sims, np.take_along_axis(brute, order, axis=1), rtol=1e-5, atol=1e-6)


def test_fewer_vectors_than_k_pads_with_missing():
    sims, ids = sharded_search(l2_normalize(RNG.normal(size=(3, DIM))), [1, 2], l2_normalize(RNG.normal(size=(2, DIM))), 5)
    assert np.isinf(sims[:, 3:]).all() and (ids[:, 3:] == b"").all()
    assert np.isfinite(sims[:, :3]).all()


def test_leave_one_out_drops_the_query_itself():
    vectors = l2_normalize(RNG.normal(size=(50, DIM)))
    sims, ids = sharded_search(vectors, [20, 30], vectors[:5], 4)
    own = ids_for(50)[:5]
    assert (ids[:, 0] == own).all()  # each vector is its own nearest
    kept_sims, kept_ids = drop_self(sims, ids, own, 3)
    assert kept_ids.shape == (5, 3) and not (kept_ids == own[:, None]).any()
    np.testing.assert_array_equal(kept_ids, ids[:, 1:4])
    # a query that is not in its top k+1 (an identical twin outranked it) loses the last instead
    _, kept = drop_self(sims, ids, np.asarray([b"f" * 32] * 5, dtype="S32"), 3)
    np.testing.assert_array_equal(kept, ids[:, :3])


def test_others_are_searched_for_near_duplicates():
    vectors = l2_normalize(RNG.normal(size=(60, DIM)))
    shard = IndexShard()
    shard.add_model("m", DIM)
    shard.add("m", vectors[:40], ids_for(40))
    shard.add("m", vectors[40:], ids_for(20, 40), reference=False)
    (ref_sims, ref_ids), (all_sims, all_ids) = shard.search("m", vectors[45:46], 3, 2)
    assert all_ids[0, 0] == ids_for(60)[45] and all_sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert not np.isin(ref_ids, ids_for(20, 40)).any()


def test_ivf_recall_at_10_on_clustered_random_data_stays_above_the_floor():
    """Floor: recall@10 >= 0.95 with nprobe 16 of 64 lists on 20,000 clustered vectors."""
    centres = RNG.normal(size=(50, DIM)) * 3
    vectors = l2_normalize(centres[RNG.integers(0, 50, 20000)] + RNG.normal(size=(20000, DIM)))
    queries = l2_normalize(centres[RNG.integers(0, 50, 300)] + RNG.normal(size=(300, DIM)))
    plan = plan_index(20000, DIM, kind="ivf", nlist=64)
    template = train_template(plan, vectors[:5000], nprobe=16)
    _, approx = sharded_search(vectors, [12000, 8000], queries, 10, template)
    _, exact = sharded_search(vectors, [20000], queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall


def test_auto_plan_follows_size_and_budget():
    assert plan_index(100_000, 512).kind == "flat"
    big = plan_index(10_000_000, 512, memory_budget_gb=64)
    assert big.kind == "ivf" and big.nlist == 2 ** round(np.log2(4 * np.sqrt(10_000_000)))
    tight = plan_index(10_000_000, 512, memory_budget_gb=4)
    assert tight.kind == "ivfpq" and tight.factory.endswith("PQ64") and tight.memory_bytes < 4 * 1024**3
    assert plan_index(500, 8, kind="ivf").nlist <= 500 // 39
