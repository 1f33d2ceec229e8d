"""Time and size of ``ood-ray report`` on the quality benchmark's run and on a 10^6-row run.

1. The quality benchmark's images (CIFAR-10 train + test, DTD, MNIST test: 67,868 files, see
   ``bench_quality.py``) audited with the four CIFAR ResNets and every pass on (lint, duplicates,
   clusters, map, drift), then ``ood-ray evaluate`` (OOD = DTD and MNIST, ID = CIFAR-10 test), so
   the report has every section. Reused from ``--work`` when it is already there.
2. A synthetic run of about 10^6 rows made from that run: every table's rows repeated
   (``--copies``, 15 by default) with new image and group ids (the URIs stay real, so thumbnails
   are made from the same files), ``run.json`` listing the new files.
3. ``ood-ray report`` run as a user runs it (a subprocess that starts its own Ray), on both; wall
   time, folder size, thumbnails, and the ratio of the second to the first (target: at most 2).

Targets (issue 14): the quality run's report under 60 s and under 30 MB on this machine.

Usage: ``python benchmarks/bench_report.py [--work DIR] [--copies 15] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

from bench_knn_quality import write_manifest  # noqa: E402
from bench_quality import CHECKPOINTS, models_override  # noqa: E402

AUDIT = ["knn.k=50", "io.rows_per_block=512", "embed.batch_size=256", "ray.progress_interval_s=60"]
#: Columns holding image ids, per table (repeated rows get ``<id>~<copy>``).
ID_COLUMNS = {"images": ["image_id"], "channels": ["image_id"], "lint": ["image_id"],
              "duplicates": ["image_id", "group_id"], "duplicate_pairs": ["image_id", "other_id"],
              "neighbors": ["image_id", "neighbor_id"], "predictions": ["image_id"]}


def audit_quality_run(work: Path) -> str:
    out = work / "run"
    if (out / "run.json").exists():
        print(f"reusing the audited run in {out}")
        return str(out)
    from ood_ray.config import load_config
    from ood_ray.evaluate import evaluate
    from ood_ray.pipeline import run_audit

    manifest = write_manifest(work)
    started = time.perf_counter()
    run = run_audit(load_config(None, [models_override(list(CHECKPOINTS)), *AUDIT], source=str(manifest),
                                out=str(out), overwrite=True))
    print(f"audit of {run['objects_in']:,} images in {time.perf_counter() - started:.0f} s")
    evaluate(str(out), ood_splits=["dtd", "mnist"], id_splits=["test"])
    return str(out)


def synthesize(source: str, target: Path, copies: int) -> str:
    """A committed run whose tables are ``source``'s repeated ``copies`` times with new ids."""
    import duckdb

    from ood_ray.run.layout import read_run, table_files

    run = read_run(source)
    shutil.rmtree(target, ignore_errors=True)
    con = duckdb.connect()
    tables = {}
    for table, info in run["tables"].items():
        files = table_files(source, run, table)
        listing = "[" + ", ".join(f"'{f}'" for f in files) + "]"
        ids = ID_COLUMNS.get(table, [])
        repeat = bool(ids)
        replace = ", ".join(f"{c} || '~' || copy AS {c}" for c in ids)
        select = f"SELECT * EXCLUDE (copy) REPLACE ({replace}) FROM read_parquet({listing}), range({copies}) t(copy)" if repeat \
            else f"SELECT * FROM read_parquet({listing})"
        (target / table).mkdir(parents=True)
        name = f"part-synthetic-{table}.parquet"
        con.execute(f"COPY ({select}) TO '{target / table / name}' (FORMAT parquet, ROW_GROUP_SIZE 131072)")
        rows = con.execute(f"SELECT count(*) FROM '{target / table / name}'").fetchone()[0]
        tables[table] = {"files": [name], "rows": rows}
    run = {**run, "run_id": run["run_id"] + "-x" + str(copies), "tables": tables,
           "objects_in": tables["images"]["rows"], "rows_out": tables["images"]["rows"]}
    (target / "run.json").write_text(json.dumps(run))
    return str(target)


def time_report(out: str, to: Path) -> dict:
    shutil.rmtree(to, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ood_ray", "report", out, "--to", str(to)], capture_output=True,
                          text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    recorded = json.loads((to / "report.json").read_text())
    size = sum(p.stat().st_size for p in to.rglob("*") if p.is_file())
    return {"seconds": round(wall, 1), "mb": round(size / 1e6, 2), "thumbnails": recorded["thumbnails"],
            "thumbnails_missing": recorded["thumbnails_missing"], "map_points": recorded["map_points"],
            "sections": recorded["sections"], "section_seconds": recorded["section_seconds"],
            "html_mb": round((to / "report.html").stat().st_size / 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-report")
    parser.add_argument("--copies", type=int, default=15)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "report.json"))
    args = parser.parse_args()
    work = prepare(args.work)
    if work is None:
        return 2
    quality = audit_quality_run(work)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    synthetic = synthesize(quality, work / "synthetic", args.copies)
    results = {}
    for name, out in (("quality run", quality), (f"synthetic x{args.copies}", synthetic)):
        rows = json.loads(Path(out, "run.json").read_text())["tables"]["images"]["rows"]
        results[name] = {"rows": rows, **time_report(out, work / f"report-{name.split()[0]}")}
    first, second = results.values()
    ratio = {"seconds": round(second["seconds"] / first["seconds"], 2), "mb": round(second["mb"] / first["mb"], 2)}
    print("\n| run | images rows | report s | size MB (html) | thumbnails (missing) | map points | sections |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rows']:,} | {r['seconds']} | {r['mb']} ({r['html_mb']}) | {r['thumbnails']} "
              f"({r['thumbnails_missing']}) | {r['map_points']} | {len(r['sections'])} |")
    print(f"\nsecond / first: time x{ratio['seconds']}, size x{ratio['mb']} (target: at most x2); "
          f"first: {first['seconds']} s (target < 60), {first['mb']} MB (target < 30)")
    Path(args.json).write_text(json.dumps({"runs": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
