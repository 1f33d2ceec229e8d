"""How each stage's driver work grows with the number of rows: 10^5, 10^6, 10^7.

Every step runs in its own process (so its peak memory is its own: ``ru_maxrss``) on synthetic
inputs of ``N`` rows written as Parquet parts of 100,000 rows:

- ``manifest``: a folder of Parquet manifest parts of 100,000 rows, ``N`` URIs (5% named twice) -> the run's manifest
  parts (ids included, repeats numbered), built by Ray tasks as the audit builds them;
- ``lint``: thresholds and flags over an ``images`` table of ``N`` rows with every statistic (Ray
  tasks over the parts, as the audit runs it; the driver's memory is what is measured);
- ``dedup``: exact and near-duplicate groups over ``N`` rows of ``hash_pixels``/``phash``/``dhash``
  (random hashes, 2% planted near copies within 2 bits; the shuffle in Ray tasks as the audit runs it);
- ``drift``: the statistics' tests (KS, CvM) of a ``test`` split (10%) against a ``train`` split
  (90%) at the default sample sizes, the samples drawn by Ray tasks as in the audit;
- ``pipeline``: (``--pipeline N``) the whole audit of an ``N``-row manifest naming 1,000 tiny PNGs
  through hard links, its stage seconds and the driver's peak memory.

Targets (issue 12): driver peak memory flat (<= 2 GB at 10^7), every step <= 12x slower from
10^6 to 10^7. Prints a table and writes ``benchmarks/results/scale.json``; then turns the measured
per-CPU rates (these steps, the scan and embedding rates of the other benchmarks, and
``knn_scale.json`` when present) into node-hours for 10^8 and 10^9 images on the node types of
``ray_cluster.yaml`` (see :data:`SCAN_RATES` and :data:`ASSUMED_GPU_IMAGES_PER_S` for what is
measured and what is assumed).

Usage: ``python benchmarks/bench_scale.py [--sizes 100000,1000000] [--steps dedup] [--update] [--pipeline 100000] [--json PATH]``
(``--update``: keep the figures of the steps not measured now from the existing ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PART_ROWS = 100_000


def _parts(folder: Path, n: int, make) -> list[str]:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for start in range(0, n, PART_ROWS):
        path = folder / f"part-{start // PART_ROWS:05d}.parquet"
        pq.write_table(make(start, min(PART_ROWS, n - start)), path)
        uris.append(str(path))
    return uris


def synthetic_images(start: int, n: int):
    import pyarrow as pa

    from ood_ray.stats.image import IMAGE_STAT_NAMES

    rng = np.random.default_rng(start)
    # ids that look like the audit's (XXH3-128 hex): group ids take their first 16 digits
    columns = {"image_id": [f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}{i:016x}" for i in range(start, start + n)],
               "uri": [f"/data/img_{i}.png" for i in range(start, start + n)],
               "split": np.where(rng.random(n) < 0.9, "train", "test").tolist(),
               "label": [f"c{i % 10}" for i in range(start, start + n)],
               "status": ["ok"] * n}
    for name in IMAGE_STAT_NAMES:
        columns[name] = rng.normal(0.5, 0.1, n) if name not in ("width", "height", "size", "channels", "depth") \
            else rng.integers(16, 64, n)
    hashes = rng.integers(0, 2**63, (n, 3), dtype=np.int64).astype(np.uint64)
    near = rng.random(n) < 0.02
    flips = (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)) | (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64))
    hashes[near, 1] = hashes[np.roll(np.arange(n), 1)[near], 1] ^ flips[near]
    columns["hash_pixels"] = [f"{h:032x}" for h in hashes[:, 0]]
    columns["phash"] = pa.array(hashes[:, 1], pa.uint64())
    columns["dhash"] = pa.array(hashes[:, 2], pa.uint64())
    return pa.table(columns)


def prepare(name: str, n: int, workdir: Path) -> None:
    """Write the step's inputs (in another process than the measured one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name == "manifest":
        def manifest(start: int, rows: int):
            uris = [f"s3://bucket/data/{i % 997}/img_{i}.png" for i in range(start, start + rows)]
            uris = [uris[i - 1] if i % 20 == 0 and i else u for i, u in enumerate(uris)]
            return pa.table({"uri": uris, "label": [f"c{i % 10}" for i in range(start, start + rows)]})

        _parts(workdir / "manifest", n, manifest)
        pq.write_table(pq.read_table(workdir / "manifest"), workdir / "manifest.parquet")
    elif name != "pipeline":
        _parts(workdir / "images", n, synthetic_images)


def step(name: str, n: int, workdir: Path) -> dict:
    """Run one step in this process over the prepared inputs; returns its seconds."""
    import duckdb

    from ood_ray.config import load_config

    if name == "manifest":
        import ray

        from ood_ray.io import storage
        from ood_ray.io.inputs import build_inputs
        from ood_ray.run.layout import RunLayout
        from ood_ray.tables import RESERVED_COLUMNS

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        config = load_config(None, [], source=str(workdir / "manifest"), out=str(workdir / "out"))
        started = time.perf_counter()
        inputs = build_inputs(config, RESERVED_COLUMNS, RunLayout(config.out), storage.DEFAULT_RETRY)
        assert inputs.num_rows == n
        return {"seconds": time.perf_counter() - started, "parts": len(inputs.parts)}
    files = sorted(str(p) for p in (workdir / "images").glob("*.parquet"))
    from ood_ray.query import register_table

    con = duckdb.connect()
    if os.environ.get("DUCKDB_LIMIT"):
        con.execute(f"SET memory_limit = '{os.environ['DUCKDB_LIMIT']}'")
        con.execute(f"SET temp_directory = '{workdir / 'spill'}'")
    register_table(con, "images", files)
    config = load_config(None, [], source="x", out="o")
    started = time.perf_counter()
    if name in ("lint", "dedup"):
        import ray

        from ood_ray.parts import RayParts
        from ood_ray.run.layout import RunLayout

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        parts = RayParts(files, RunLayout(str(workdir / "out")))
        started = time.perf_counter()  # the Ray start is not the step's
        if name == "lint":
            from ood_ray.lint.linter import run_lint

            run_lint(parts, config.lint)
        else:
            from ood_ray.dedup.hash_groups import run_dedup

            duplicates, summary = run_dedup(parts, config.dedup, n)
            seconds = time.perf_counter() - started
            return {"seconds": seconds, "groups": summary["groups"], "partitions": summary["partitions"]}
    elif name == "drift":
        import ray

        from ood_ray.drift.drift_pass import run_drift
        from ood_ray.parts import RayParts
        from ood_ray.sampling import Sampler

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        started = time.perf_counter()
        run_drift(con, "status = 'ok' AND split = 'train'", "status = 'ok' AND split <> 'train'", config, [], None,
                  sampler=Sampler(RayParts(files)))
    else:
        raise ValueError(name)
    return {"seconds": time.perf_counter() - started}


def pipeline(n: int, workdir: Path) -> dict:
    """The whole audit of an ``n``-row manifest (1,000 PNGs named through hard links)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    originals = workdir / "originals"
    originals.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1000):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(originals / f"{i}.png")
    links = workdir / "links"
    uris = []
    for i in range(n):
        folder = links / f"{i // 10000:04d}"
        if i % 10000 == 0:
            folder.mkdir(parents=True)
        path = folder / f"{i}.png"
        os.link(originals / f"{i % 1000}.png", path)
        uris.append(str(path))
    pq.write_table(pa.table({"uri": uris}), workdir / "manifest.parquet")
    del uris
    from ood_ray.config import load_config
    from ood_ray.pipeline import run_audit

    started = time.perf_counter()
    run = run_audit(load_config(None, ["io.rows_per_block=1024", "ray.num_cpus=2", "ray.progress_interval_s=60"],
                                source=str(workdir / "manifest.parquet"), out=str(workdir / "out")))
    return {"seconds": time.perf_counter() - started, "stage_seconds": run["stage_seconds"]}


def measure(name: str, n: int) -> dict:
    """Prepare the inputs in one process, run the step in a fresh one: its wall seconds and peak
    memory (``ru_maxrss``)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("--prepare", "--worker"):
            done = subprocess.run([sys.executable, __file__, mode, name, str(n), tmp], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Per-CPU rates measured elsewhere in this repository (this 2-CPU machine), used by the plan.
SCAN_RATES = {
    # images/s per CPU, end to end through the Ray pipeline (benchmarks/bench_e2e.py, 2026-11-26:
    # 50,000 CIFAR-10 JPEGs, scan stage at 2,978 images/s on 2 CPUs; was 1,037 before issue 13)
    "scan, 32 px images (CIFAR-size)": 2978 / 2,
    # images/s per core, bytes -> everything, DTD photos >= 640 x 480 (benchmarks/bench_scan.py);
    # the pipeline's fixed costs are small next to 8 ms per image
    # (126 on 2026-11-23; 46-49 measured by bench_e2e's runs of bench_scan on 2026-11-26 on the same VM)
    "scan, photos (>= 640 x 480)": 47,
    # images/s per CPU, ResNet-50 @224 in the Ray actor on CPU (benchmarks/bench_embed.py, 20.8/s on 2)
    "embed ResNet-50 @224 on CPU": 20.8 / 2,
}
#: An A10G (g5.2xlarge) embedding ResNet-50 @224: NOT measured here (no GPU was lent to this
#: session) and no per-GPU figure is in the Ray Data material we hold; an assumption to replace
#: with benchmarks/bench_gpu.py's figure.
ASSUMED_GPU_IMAGES_PER_S = 1000.0
NODES = {"cpu": ("c6i.8xlarge", 32), "gpu": ("g5.2xlarge", 1)}


def plan(results: dict, knn: dict | None) -> list[tuple[str, str, float, float]]:
    """``(work, node type, node-hours at 10^8, at 10^9)`` from the measured per-CPU rates."""
    rows = []
    cpu_name, cpus = NODES["cpu"]
    for work, per_cpu in SCAN_RATES.items():
        rows.append((work, cpu_name, 1e8 / per_cpu / cpus / 3600, 1e9 / per_cpu / cpus / 3600))
    rows.append(("embed ResNet-50 @224 on GPU (assumed rate)", NODES["gpu"][0],
                 1e8 / ASSUMED_GPU_IMAGES_PER_S / 3600, 1e9 / ASSUMED_GPU_IMAGES_PER_S / 3600))
    for name, by_n in results.items():
        measured = [(n, r) for n, r in by_n.items() if "seconds" in r and name != "pipeline"]
        if not measured:
            continue
        n, r = max(measured, key=lambda item: int(item[0]))
        cpu_seconds_per_row = r["seconds"] * 2 / int(n)  # this machine: 2 CPUs
        rows.append((f"{name} (global pass)", cpu_name, 1e8 * cpu_seconds_per_row / cpus / 3600,
                     1e9 * cpu_seconds_per_row / cpus / 3600))
    if knn:
        add_per_cpu = knn["n"] / knn["add_seconds"] / 2
        qps = max(row["queries_per_s"] for row in knn["search"] if row["nprobe"] == 16) / 2
        # every image is added (reference) and queried once; the index grows with n, the per-query
        # cost of IVF with nlist ~ sqrt(n) grows ~sqrt(n / n_measured)
        hours = [(target / add_per_cpu + target * (target / knn["n"]) ** 0.5 / qps) / cpus / 3600
                 for target in (1e8, 1e9)]
        rows.append(("kNN IVF-PQ (add + query, nprobe 16)", cpu_name, *hours))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--steps", default="manifest,lint,dedup,drift")
    parser.add_argument("--pipeline", default="", help="row counts of full audits, e.g. 100000")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--plan-only", action="store_true", help="print the node-hours from a previous --json")
    parser.add_argument("--update", action="store_true",
                        help="measure --steps and keep the other steps' figures from the existing --json")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare[0], int(args.prepare[1]), Path(args.prepare[2]))
        return 0
    if args.worker:
        name, n, workdir = args.worker[0], int(args.worker[1]), Path(args.worker[2])
        result = pipeline(n, workdir) if name == "pipeline" else step(name, n, workdir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, dict[int, dict]] = {}
    if args.plan_only or (args.update and Path(args.json).exists()):
        results = {k: {int(n): r for n, r in v.items()} for k, v in json.loads(Path(args.json).read_text()).items()
                   if k != "plan"}
    if args.plan_only:
        args.steps, args.pipeline = "", ""
    for name in [step for step in args.steps.split(",") if step]:
        for n in sizes:
            results.setdefault(name, {})[n] = measure(name, n)
            print(name, n, results[name][n], flush=True)
    for n in [int(s) for s in args.pipeline.split(",") if s]:
        results.setdefault("pipeline", {})[n] = measure("pipeline", n)
        print("pipeline", n, results["pipeline"][n], flush=True)
    print(f"\n{'step':<10}" + "".join(f"{n:>22,}" for n in sizes) + "     growth (last two sizes)")
    for name, by_n in results.items():
        cells = [by_n.get(n, {}) for n in sizes]
        text = "".join(f"{c['seconds']:>10.2f} s {c['peak_rss_mb']:>7.0f} MB" if "seconds" in c else f"{'-':>22}" for c in cells)
        ok = [c for c in cells if "seconds" in c]
        growth = f"x{ok[-1]['seconds'] / ok[-2]['seconds']:.1f}" if len(ok) > 1 and ok[-2]["seconds"] > 0 else ""
        print(f"{name:<10}{text}     {growth}")
    knn_path = Path(args.json).parent / "knn_scale.json"
    knn = json.loads(knn_path.read_text()) if knn_path.exists() else None
    planned = plan(results, knn)
    print(f"\n{'work':<46}{'node type':<14}{'node-hours 10^8':>16}{'node-hours 10^9':>16}")
    for work, node, h8, h9 in planned:
        print(f"{work:<46}{node:<14}{h8:>16.1f}{h9:>16.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({**results, "plan": planned}, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
