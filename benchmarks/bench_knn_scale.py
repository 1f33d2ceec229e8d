"""kNN at 10^7 vectors on this machine: IVF-PQ across Ray shards, its recall against exact search,
memory per shard against ``knn.memory_budget_gb`` and queries per second.

Data (generated, stated): ``N`` unit vectors of dimension 128 around 10,000 random unit centres
with noise of norm ~0.5 (clustered, as embeddings are; IVF on isotropic noise is near chance by
construction), in chunks of 10^6 regenerated from their seeds, so the 10^7 vectors never sit in
one process. Queries: 2,000 more vectors of the same distribution.

- **Plan**: :func:`ood_ray.index.planner.plan_index` for ``N`` vectors with ``knn.index=ivfpq``
  and ``nlist`` 4,096 (``knn.nlist``; the planner's ``4 sqrt(N)`` default of 16,384 lists costs 4x
  more to assign on two cores), trained on ``knn.train_sample`` = 200,000 vectors, as the kNN stage
  trains its template.
- **Shards**: ``S`` :class:`ood_ray.index.shards.IndexShard` actors (``S`` = 2), vectors added in
  chunks through the object store, each shard's unique memory (USS) measured after the adds and
  compared with ``knn.memory_budget_gb`` (8 GiB).
- **Search**: queries in blocks of 1,024 to every shard, merged exactly (``merge_topk``), at
  ``nprobe`` 16 (the default) and 64; queries/s.
- **Recall@10** against exact inner-product search: on the first 10^6 vectors (an IVF-PQ with the
  same template against ``IndexFlatIP``), and on all ``N`` (the exact top 10 computed chunk by
  chunk over the regenerated vectors).

Usage: ``python benchmarks/bench_knn_scale.py [--n 10000000] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ood_ray.config import load_config  # noqa: E402
from ood_ray.index.planner import GIB, plan_index, train_template  # noqa: E402
from ood_ray.index.shards import IndexShard  # noqa: E402
from ood_ray.index.topk import merge_topk  # noqa: E402

DIM = 128
K = 10
CHUNK = 1_000_000
BLOCK = 1024
CENTRES = 10_000


class MeasuredShard(IndexShard):
    def uss(self) -> int:
        import psutil

        return psutil.Process().memory_full_info().uss

    def use_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe
        for model in self.models.values():
            model.nprobe = nprobe
            model.set_nprobe()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def centres() -> np.ndarray:
    return unit(np.random.default_rng(12345).standard_normal((CENTRES, DIM), dtype=np.float32))


def chunk(index: int, rows: int, around: np.ndarray) -> np.ndarray:
    """Vectors of chunk ``index`` (seeded by it: the same every time)."""
    rng = np.random.default_rng(1000 + index)
    noise = (0.5 / np.sqrt(DIM)) * rng.standard_normal((rows, DIM), dtype=np.float32)
    return unit(around[rng.integers(0, len(around), rows)] + noise)


def ids_of(start: int, rows: int) -> np.ndarray:
    return np.char.mod("%032x", np.arange(start, start + rows)).astype("S32")


def exact_top(queries: np.ndarray, n: int, around: np.ndarray) -> np.ndarray:
    """Exact top-K positions of every query among the first ``n`` vectors: an ``IndexFlatIP`` per
    regenerated chunk, the answers merged."""
    import faiss

    best_sims = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    for index, start in enumerate(range(0, n, CHUNK)):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(chunk(index, min(CHUNK, n - start), around))
        sims, positions = flat.search(queries, K)
        all_sims = np.concatenate([best_sims, sims], axis=1)
        all_ids = np.concatenate([best_ids, positions + start], axis=1)
        order = np.argsort(-all_sims, axis=1, kind="stable")[:, :K]
        best_sims, best_ids = np.take_along_axis(all_sims, order, 1), np.take_along_axis(all_ids, order, 1)
    return best_ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "knn_scale.json"))
    args = parser.parse_args()
    import faiss
    import ray

    knn = load_config(None, ["knn.index=ivfpq", "knn.nlist=4096"], source="s", out="o").knn
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             object_store_memory=2 * 1024**3)
    around = centres()
    queries = unit(around[np.random.default_rng(7).integers(0, CENTRES, args.queries)]
                   + (0.5 / np.sqrt(DIM)) * np.random.default_rng(8).standard_normal((args.queries, DIM), dtype=np.float32))
    plan = plan_index(args.n, DIM, kind=knn.index, memory_budget_gb=knn.memory_budget_gb, nlist=knn.nlist)
    started = time.perf_counter()
    sample = np.concatenate([chunk(i, knn.train_sample // 10, around) for i in range(10)])
    template = train_template(plan, sample, knn.nprobe)
    train_seconds = time.perf_counter() - started
    print(f"plan {plan.factory} for {args.n:,} x {DIM}: estimate {plan.memory_bytes / GIB:.2f} GiB; trained in {train_seconds:.0f} s")

    shard_cpus = (os.cpu_count() or 2) / args.shards
    actors = [ray.remote(MeasuredShard).options(num_cpus=shard_cpus).remote(knn.nprobe) for _ in range(args.shards)]
    ray.get([a.add_model.remote("m", DIM, template) for a in actors])
    before = ray.get([a.uss.remote() for a in actors])
    started = time.perf_counter()
    for index, start in enumerate(range(0, args.n, CHUNK)):
        rows = min(CHUNK, args.n - start)
        vectors, ids = chunk(index, rows, around), ids_of(start, rows)
        bounds = np.linspace(0, rows, args.shards + 1).astype(int)
        ray.get([a.add.remote("m", ray.put(vectors[lo:hi]), ids[lo:hi]) for a, lo, hi in zip(actors, bounds[:-1], bounds[1:])])
        print(f"  added {start + rows:,} in {time.perf_counter() - started:.0f} s", flush=True)
    add_seconds = time.perf_counter() - started
    uss = [after - b for after, b in zip(ray.get([a.uss.remote() for a in actors]), before)]

    results = {"n": args.n, "dim": DIM, "data": f"{CENTRES} unit centres, noise norm ~0.5, unit vectors",
               "plan": plan.to_dict(), "shards": args.shards, "train_seconds": round(train_seconds, 1),
               "add_seconds": round(add_seconds, 1), "uss_mib_per_shard": [round(u / 2**20) for u in uss],
               "memory_budget_gib": knn.memory_budget_gb, "search": []}
    truth_all = exact_top(queries, args.n, around)
    subset = min(args.n, CHUNK)
    truth_subset = exact_top(queries, subset, around)
    small = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
    small.add(chunk(0, subset, around))
    for nprobe in (16, 64):
        ray.get([a.use_nprobe.remote(nprobe) for a in actors])
        ray.get([a.search.remote("m", queries[:BLOCK], K) for a in actors])  # warm-up
        started = time.perf_counter()
        pending = []
        for start in range(0, len(queries), BLOCK):
            block = ray.put(queries[start:start + BLOCK])
            pending.append([a.search.remote("m", block, K) for a in actors])
        found = np.concatenate([merge_topk([answer[0] for answer in ray.get(futures)], K)[1] for futures in pending])
        seconds = time.perf_counter() - started
        positions = np.array([[int(x, 16) for x in row] for row in found.astype("U32")])
        faiss.extract_index_ivf(small).nprobe = nprobe
        _, small_found = small.search(queries, K)
        row = {"nprobe": nprobe, "queries_per_s": round(len(queries) / seconds, 1),
               "recall_at_10_all": round(recall(positions, truth_all), 4),
               "recall_at_10_subset_1e6": round(recall(small_found, truth_subset), 4)}
        results["search"].append(row)
        print(row, flush=True)
    for a in actors:
        ray.kill(a)
    ray.shutdown()
    print(f"\nIVF-PQ at {args.n:,} vectors (dim {DIM}), {args.shards} shards: {plan.factory}, trained {train_seconds:.0f} s, "
          f"added {add_seconds:.0f} s; USS per shard {results['uss_mib_per_shard']} MiB (budget {knn.memory_budget_gb} GiB)")
    print(f"{'nprobe':>7}{'queries/s':>11}{'recall@10 (all)':>17}{'recall@10 (10^6 subset)':>25}")
    for row in results["search"]:
        print(f"{row['nprobe']:>7}{row['queries_per_s']:>11.1f}{row['recall_at_10_all']:>17.4f}{row['recall_at_10_subset_1e6']:>25.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
