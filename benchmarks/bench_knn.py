"""Sharded FAISS search on Ray against one in-process index, on the same vectors, in the same run.

Vectors: dimension 512, generated here, L2-normalised. Exact search (``IndexFlatIP``), k = 10.

- ``single``: one ``IndexFlatIP`` in this process, FAISS using all the machine's threads.
- ``sharded``: ``S`` :class:`ood_ray.index.shards.IndexShard` Ray actors splitting the vectors and
  the threads (``num_cpus = threads / S`` each); queries sent in blocks of 1,024 to every shard,
  answers merged exactly (``merge_topk``), blocks pipelined. Ratio = sharded / single queries/s
  (target >= 0.8 on one machine). Memory: the unique memory (USS) of this process (single) and the
  sum over the shard actors (sharded), each minus its own before the vectors were added.
- Growth: 10^5, 3 x 10^5 and 10^6 reference vectors (isotropic random).
- IVF at 10^6 (clustered random vectors: 1,000 unit centres with noise of norm ~0.5, since IVF on
  isotropic noise is near chance by construction): ``IVF4096,Flat`` trained on 100,000 vectors, nprobe 16 and 64;
  recall@10 against exact and the speed-up.

Usage: ``python benchmarks/bench_knn.py [--json PATH]``
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

from ood_ray.index.planner import plan_index, train_template  # noqa: E402
from ood_ray.index.shards import IndexShard  # noqa: E402
from ood_ray.index.topk import merge_topk  # noqa: E402

DIM = 512
K = 10
BLOCK = 1024


def rss_bytes() -> int:
    """Memory the process owns (USS: not the object-store pages it has mapped)."""
    import psutil

    return psutil.Process().memory_full_info().uss


class MeasuredShard(IndexShard):
    def rss(self) -> int:
        return rss_bytes()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def isotropic(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        out[start : start + 100_000] = unit(rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32))
    return out


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        # noise of norm ~0.5 around unit centres (per coordinate 0.5 / sqrt(d))
        noise = (0.5 / np.sqrt(DIM)) * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = unit(centres[rng.integers(0, len(centres), m)] + noise)
    return out


def single_search(vectors: np.ndarray, queries: np.ndarray, template: bytes | None = None, nprobe: int = 16):
    import faiss

    before = rss_bytes()
    if template is None:
        index = faiss.IndexFlatIP(DIM)
    else:
        index = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
        faiss.extract_index_ivf(index).nprobe = nprobe
    index.add(vectors)
    memory = rss_bytes() - before
    index.search(queries[:BLOCK], K)
    started = time.perf_counter()
    sims, ids = index.search(queries, K)
    seconds = time.perf_counter() - started
    del index
    return len(queries) / seconds, memory, ids


def sharded_search(vectors: np.ndarray, queries: np.ndarray, shards: int, threads: int):
    import ray

    actor = ray.remote(MeasuredShard).options(num_cpus=threads / shards)
    actors = [actor.remote(16) for _ in range(shards)]
    ray.get([a.add_model.remote("m", DIM) for a in actors])
    before = ray.get([a.rss.remote() for a in actors])
    ids = np.asarray([f"{i:032x}" for i in range(len(vectors))], dtype="S32")
    bounds = np.linspace(0, len(vectors), shards + 1).astype(int)
    for a, lo, hi in zip(actors, bounds[:-1], bounds[1:]):
        for start in range(lo, hi, 200_000):
            ray.get(a.add.remote("m", ray.put(vectors[start : min(start + 200_000, hi)]), ids[start : min(start + 200_000, hi)]))
    memory = sum(ray.get([a.rss.remote() for a in actors])) - sum(before)
    ray.get([a.search.remote("m", queries[:BLOCK], K) for a in actors])  # warm-up
    started = time.perf_counter()
    pending = []
    for start in range(0, len(queries), BLOCK):
        block = ray.put(queries[start : start + BLOCK])
        pending.append([a.search.remote("m", block, K) for a in actors])
    found = []
    for futures in pending:
        found.append(merge_topk([answer[0] for answer in ray.get(futures)], K)[1])
    seconds = time.perf_counter() - started
    for a in actors:
        ray.kill(a)
    positions = np.asarray([[int(x, 16) for x in row] for row in np.concatenate(found).astype("U32")])
    return len(queries) / seconds, memory, positions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "knn.json"))
    args = parser.parse_args()
    import faiss
    import ray

    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False, object_store_memory=6 * 1024**3)
    rng = np.random.default_rng(0)
    results: dict = {"threads": args.threads, "exact": [], "ivf": []}
    print(f"{'n':>9} {'queries':>8} {'single q/s':>11} {'shards':>6} {'sharded q/s':>12} {'ratio':>6} {'single MiB':>11} {'sharded MiB':>12} {'same ids':>9}")
    for n, n_queries in ((100_000, 8192), (300_000, 4096), (1_000_000, 2048)):
        vectors, queries = isotropic(n, rng), isotropic(n_queries, rng)
        qps_single, mem_single, ids_single = single_search(vectors, queries)
        for shards in (1, args.threads):
            qps, mem, ids = sharded_search(vectors, queries, shards, args.threads)
            same = float(np.mean(ids == ids_single))
            results["exact"].append({"n": n, "queries": n_queries, "single_qps": qps_single, "shards": shards, "sharded_qps": qps,
                                     "ratio": qps / qps_single, "single_memory_bytes": mem_single,
                                     "sharded_memory_bytes": mem, "identical_neighbours": same})
            print(f"{n:>9} {n_queries:>8} {qps_single:>11.0f} {shards:>6} {qps:>12.0f} {qps / qps_single:>6.2f} "
                  f"{mem_single / 2**20:>11.0f} {mem / 2**20:>12.0f} {same:>9.4f}", flush=True)
        del vectors

    n = 1_000_000
    centres = unit(rng.standard_normal((1000, DIM), dtype=np.float32))
    vectors, queries = clustered(n, rng, centres), clustered(2048, rng, centres)
    qps_exact, _, exact = single_search(vectors, queries)
    plan = plan_index(n, DIM, kind="ivf")
    started = time.perf_counter()
    template = train_template(plan, vectors[rng.choice(n, 100_000, replace=False)], 16)
    train_seconds = time.perf_counter() - started
    print(f"IVF at 10^6 (clustered): {plan.factory}, trained on 100,000 in {train_seconds:.0f} s; exact {qps_exact:.0f} q/s")
    for nprobe in (16, 64):
        qps, _, approx = single_search(vectors, queries, template, nprobe)
        recall = float(np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact)]))
        results["ivf"].append({"n": n, "factory": plan.factory, "nprobe": nprobe, "recall_at_10": recall,
                               "qps": qps, "exact_qps": qps_exact, "speedup": qps / qps_exact, "train_seconds": train_seconds})
        print(f"  nprobe {nprobe:>3}: recall@10 {recall:.4f}, {qps:.0f} q/s, speed-up {qps / qps_exact:.1f}x", flush=True)
    ray.shutdown()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
