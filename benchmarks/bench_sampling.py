"""What the fits' samples cost as the run grows: the seeded bottom-k sample (``ORDER BY hash LIMIT``)
that the fits use (probes, Mahalanobis/RMD, clusters, maps, the autoencoder, the kNN training set,
drift), over Parquet parts of synthetic 512-d embeddings -- drawn part by part in Ray tasks as the
audit draws it (``ood_ray/sampling.py``), against the same query run by DuckDB on the driver (the
way it was drawn before; the same rows, checked) and a plain scan of the column on the driver.

Usage: ``python benchmarks/bench_sampling.py [--rows 250000 1000000] [--work DIR] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_parts(folder: Path, rows: int, dim: int, part_rows: int = 50_000) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for start in range(0, rows, part_rows):
        n = min(part_rows, rows - start)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        table = pa.table({"image_id": [f"{i:032x}" for i in range(start, start + n)], "status": ["ok"] * n,
                          "label": [str(i % 10) for i in range(start, start + n)],
                          "_emb_m": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
        path = folder / f"part-{start:09d}.parquet"
        pq.write_table(table, path)
        files.append(str(path))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[250_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--work", default="/tmp/ood-ray-sampling")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "sampling.json"))
    args = parser.parse_args()
    import duckdb

    import ray

    from ood_ray.parts import RayParts
    from ood_ray.query import register_table
    from ood_ray.sampling import Sampler, hash_order, sample_sql
    from ood_ray.structure import _sample

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")

    results = []
    print(f"{'rows':>10}{'GiB':>8}{'scan column s':>15}{'driver query s':>15}{'ray tasks s':>12}{'same rows':>10}")
    for rows in args.rows:
        folder = Path(args.work) / f"r{rows}"
        files = write_parts(folder, rows, args.dim)
        size = sum(Path(f).stat().st_size for f in files) / 2**30
        con = duckdb.connect()
        register_table(con, "images", files)
        started = time.perf_counter()
        con.execute('SELECT sum(len("_emb_m")) FROM images').fetchall()
        scan = time.perf_counter() - started
        started = time.perf_counter()
        sql = sample_sql(["image_id", "_emb_m"], "status = 'ok' AND \"_emb_m\" IS NOT NULL", hash_order("structure0"),
                         args.sample)
        driver_ids = con.sql(sql).to_arrow_table().column("image_id").to_pylist()
        driver = time.perf_counter() - started
        started = time.perf_counter()
        ids, X = _sample(Sampler(RayParts(files)), "_emb_m", args.sample, 0)
        sample = time.perf_counter() - started
        assert X.shape == (args.sample, args.dim)
        con.close()
        results.append({"rows": rows, "gib": size, "scan_seconds": scan, "driver_query_seconds": driver,
                        "ray_sample_seconds": sample, "same_rows": ids == driver_ids})
        print(f"{rows:>10}{size:>8.2f}{scan:>15.2f}{driver:>15.2f}{sample:>12.2f}{str(ids == driver_ids):>10}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
