"""ood-ray against its peers end to end, side by side on the same files, as users run them.

Each tool runs as its own process on the same folder (wall time from the process start to its
exit: interpreter, imports, cluster start, reading, computing, writing), the tools alternated
within each round, ``--rounds`` rounds (median reported):

- ``ood-ray``: ``python -m ood_ray.cli audit DIR --out OUT --overwrite`` (no model: statistics,
  lint, exact and near duplicates, drift when there are splits), its defaults;
- ``dataeval``: a plain script -- Pillow decodes every file, then DataEval's ``Outliers`` (image
  statistics) and ``Duplicates`` (exact and near hashes) with their defaults;
- ``cleanvision``: ``Imagelab(data_path=DIR).find_issues()`` with its defaults;
- ``imagededup``: ``PHash().find_duplicates(image_dir=DIR, recursive=True)``;
- ``fastdup``: ``fastdup.create(work_dir, input_dir=DIR).run()`` (its default run), in its own
  virtualenv (``--fastdup-python``; it pins old NumPy/Pillow), ``SENTRY_OPT_OUT`` set.

Peers run from ``--peers-python`` (a virtualenv with ``cleanvision``, ``imagededup``; DataEval
runs from this interpreter). A tool that is not installed is reported as missing, not guessed.

Sets (``../shared/data``): ``cifar10-test`` (10,000 JPEGs, 32 x 32), ``cifar10-train`` (the
50,000 training JPEGs, unzipped into a temporary folder), ``photos`` (the 100 DTD originals and
20 ImageNet photos, 120 files of 300 x 300 to 640 x 640 and more). Also reported for ood-ray:
scan images/s (the median of the rounds), the **pipeline efficiency** = a round's scan images/s /
(cores x the per-core bytes-to-everything rate of ``bench_scan.py``'s ``ours_full`` on the same kind
of images, measured right before that round), the median over the rounds (this VM's per-core rate
drifts by up to 20% over minutes, so each round is compared with its own measurement; the rounds'
rates and efficiencies are in the JSON), the part files and megabytes of every table, whether the run went with or
without Ray (``executor``), and DuckDB ``count(*)`` and a filtered aggregate
over the run's ``images`` with the parts coalesced (default) and with ``io.part_target_mb=0``.

``--ray local`` (default) runs every audit as a user on one machine does: ``ood-ray audit`` starts
its own Ray and stops it at exit. ``--ray running`` measures ood-ray as on a Ray cluster that is
already up: one head node (``ray start --head --block``, this machine's cores) for the whole set,
one audit first that is not counted (it starts Ray Data's two helper actors, the statistics actor
and the autoscaling coordinator: detached actors that every later job of the cluster reuses), then
every audit with ``--address``. The peers run beside the idle head node then (a few percent of a
core), so compare them in the default mode.

Usage: ``python benchmarks/bench_e2e.py [--sets cifar10-test,photos] [--rounds 3]
[--tools ood-ray,dataeval,cleanvision,imagededup,fastdup] [--peers-python PY] [--fastdup-python PY]
[--ray local|running]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

DATAEVAL = r"""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from dataeval.quality import Duplicates, Outliers
files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
images = [np.moveaxis(np.asarray(Image.open(f).convert("RGB")), -1, 0) for f in files]
outliers = Outliers().evaluate(images)
duplicates = Duplicates().evaluate(images)
print(len(images))
"""
CLEANVISION = r"""
import sys
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1], verbose=False)
lab.find_issues(verbose=False)
print(len(lab.issues))
"""
IMAGEDEDUP = r"""
import sys
from imagededup.methods import PHash
found = PHash(verbose=False).find_duplicates(image_dir=sys.argv[1])
print(len(found))
"""
FASTDUP = r"""
import sys
import fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(overwrite=True)
print("done")
"""


def make_sets(names: list[str], root: Path) -> dict[str, Path]:
    """The sets' folders (copied or unzipped under ``root`` where needed)."""
    sets = {}
    for name in names:
        if name == "cifar10-test":
            sets[name] = SHARED / "cifar10" / "test"
        elif name == "cifar10-train":
            target = root / "cifar10-train"
            if not target.exists():
                with zipfile.ZipFile(SHARED / "cifar10" / "train_jpg.zip") as archive:
                    archive.extractall(target)
            sets[name] = target / "train"
        elif name == "photos":
            target = root / "photos"
            if not target.exists():
                for source in [*sorted((SHARED / "dtd" / "original").glob("*/*.jpg")),
                               *sorted((SHARED / "foolbox_samples" / "imagenet_20").glob("*.jpg"))]:
                    folder = target / source.parent.name
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, folder / source.name)
            sets[name] = target
        else:
            raise SystemExit(f"unknown set {name!r}")
    return sets


def flat_view(folder: Path, target: Path) -> Path:
    """The set's files as one flat folder of symbolic links (imagededup 0.3.3 fails on nested
    folders with ``recursive=True``): the same files, read through links."""
    if not target.exists():
        target.mkdir(parents=True)
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                (target / "_".join(path.relative_to(folder).parts)).symlink_to(path)
    return target


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def command(tool: str, folder: Path, work: Path, args: argparse.Namespace, *extra: str) -> list[str] | None:
    if tool == "ood-ray":
        sets = [a for x in extra for a in ("--set", x)]
        address = ["--address", args.address] if args.address else []
        return [sys.executable, "-m", "ood_ray.cli", "audit", str(folder), "--out", str(work / "out"), "--overwrite",
                *address, *sets]
    if tool == "dataeval":
        return [sys.executable, "-c", DATAEVAL, str(folder)]
    if tool == "cleanvision":
        return [args.peers_python, "-c", CLEANVISION, str(folder)] if args.peers_python else None
    if tool == "imagededup":
        flat = flat_view(folder, work / "flat")
        return [args.peers_python, "-c", IMAGEDEDUP, str(flat)] if args.peers_python else None
    if tool == "fastdup":
        return [args.fastdup_python, "-c", FASTDUP, str(folder), str(work / "fastdup")] if args.fastdup_python else None
    raise SystemExit(f"unknown tool {tool!r}")


ENV = {"SENTRY_OPT_OUT": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def running_ray(cores: int, log: Path):
    """A Ray head node of ``cores`` CPUs for the duration (``ray start --head --block``, stopped at
    the end): yields its address once ``ray status`` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, **ENV}
    with open(log, "w") as out:
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", f"--num-cpus={cores}",
                                 "--include-dashboard=false", "--disable-usage-stats"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray_cli, "status", "--address", address], check=False, capture_output=True, env=env).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start --head failed: see {log}")
            time.sleep(1)
        yield address
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
        # `ray start` recorded the head as this machine's current cluster; a plain ray.init() elsewhere
        # would wait ~14 minutes for it once it is gone (ood-ray itself starts with address="local").
        current = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()


def timed_run(cmd: list[str], log: Path) -> float | None:
    env = {**os.environ, **ENV}
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): {' '.join(cmd[:4])} ... see {log}", flush=True)
        return None
    return seconds


def per_core_rates() -> dict[str, float]:
    """``bench_scan.py``'s ``ours_full`` (bytes to every statistic, one core) on CIFAR-10 JPEGs
    and on the DTD photos: ``{"cifar": ..., "photos": ...}``."""
    out = Path(tempfile.mkdtemp()) / "scan.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scan.py"), "--cifar", "2000", "--photo-repeat", "2",
                    "--runs", "3", "--pipeline-images", "0", "--json", str(out)], check=True, capture_output=True)
    results = json.loads(out.read_text())["per_core"]
    return {"cifar": next(r for r in results if r["dataset"].startswith("cifar10"))["images_per_s"]["ours_full"],
            "photos": next(r for r in results if r["dataset"].startswith("dtd"))["images_per_s"]["ours_full"]}


def query_seconds(out: Path) -> dict[str, float]:
    """DuckDB over the run's ``images`` files: ``count(*)`` and a filtered aggregate (best of 5)."""
    import duckdb

    files = sorted(str(p) for p in (out / "images").glob("*.parquet"))
    con = duckdb.connect()
    queries = {"count": f"SELECT count(*) FROM read_parquet({files!r})",
               "filtered": f"SELECT label, avg(brightness) FROM read_parquet({files!r}) WHERE status = 'ok' "
                           "AND brightness > 0.3 GROUP BY label"}
    out_seconds = {}
    for name, sql in queries.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            con.execute(sql).fetchall()
            best = min(best, time.perf_counter() - started)
        out_seconds[name] = best
    return out_seconds


def output_facts(out: Path) -> dict:
    run = json.loads((out / "run.json").read_text())
    files = sum(len(t["files"]) for t in run["tables"].values())
    size = sum(p.stat().st_size for table in run["tables"] for p in (out / table).glob("*.parquet"))
    tables = {table: {"files": len(t["files"]), "mb": sum(p.stat().st_size for p in (out / table).glob("*.parquet")) / 2**20}
              for table, t in run["tables"].items()}
    return {"scan_images_per_s": run["images_per_second"], "stage_seconds": run["stage_seconds"],
            "executor": run.get("executor"), "part_files": files, "output_mb": size / 2**20, "tables": tables,
            "rows_per_block": run["stages"]["scan"]["state"].get("rows_per_block")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="cifar10-test,cifar10-train,photos")
    parser.add_argument("--tools", default="ood-ray,dataeval,cleanvision,imagededup,fastdup")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON", ""))
    parser.add_argument("--fastdup-python", default=os.environ.get("FASTDUP_PYTHON", ""))
    parser.add_argument("--work", default="", help="folder for unzipped sets and outputs (default: a temporary one)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "e2e.json"))
    parser.add_argument("--ray", choices=("local", "running"), default="local",
                        help="local: each audit starts its own Ray; running: audits join one Ray head started "
                             "for the set (see the module docstring)")
    args = parser.parse_args()
    args.address = None
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    tools = [t for t in args.tools.split(",") if t]
    sets = make_sets([s for s in args.sets.split(",") if s], work)
    cores = os.cpu_count() or 1
    rates = per_core_rates()
    print(f"per-core rate (bench_scan ours_full): CIFAR-10 {rates['cifar']:,.0f}, photos {rates['photos']:,.0f} images/s; "
          f"{cores} cores", flush=True)
    results: dict[str, dict] = {"per_core_images_per_s": rates, "cores": cores, "ray": args.ray, "sets": {}}
    for name, folder in sets.items():
        with contextlib.ExitStack() as stack:
            if args.ray == "running" and "ood-ray" in tools:
                args.address = stack.enter_context(running_ray(cores, work / f"ray-head-{name}.log"))
                first = work / "runs" / name / "first-job"
                first.mkdir(parents=True, exist_ok=True)
                took = timed_run(command("ood-ray", folder, first, args), first / "ood-ray.log")
                print(f"{name}: first job on the running Ray (not counted): {took or 0:.1f} s", flush=True)
            results["sets"][name] = bench_set(name, folder, work, tools, args, cores, rates, first_set=not results["sets"])
            args.address = None
    print_table(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


def bench_set(name: str, folder: Path, work: Path, tools: list[str], args: argparse.Namespace, cores: int,
              rates: dict[str, float], first_set: bool) -> dict:
    """The rounds of one set: every tool's wall times, ood-ray's facts and efficiency per round."""
    n = count_files(folder)
    seconds: dict[str, list[float]] = {tool: [] for tool in tools}
    facts_of_rounds: list[dict] = []
    for round_ in range(args.rounds):
        if "ood-ray" in tools:  # the per-core rate of this moment, for this round's efficiency
            round_rates = rates if round_ == 0 and first_set else per_core_rates()
            round_rate = round_rates["photos" if name == "photos" else "cifar"]
            print(f"{name} round {round_ + 1} per-core rate: {round_rate:,.0f} images/s", flush=True)
        for tool in (tools if round_ % 2 == 0 else tools[::-1]):  # alternated
            runs = work / "runs" / name  # outputs never inside the audited folder
            runs.mkdir(parents=True, exist_ok=True)
            cmd = command(tool, folder, runs, args)
            if cmd is None:
                continue
            took = timed_run(cmd, runs / f"{tool}-{round_}.log")
            if took is not None:
                seconds[tool].append(took)
                print(f"{name} round {round_ + 1} {tool}: {took:.1f} s", flush=True)
            if tool == "ood-ray" and took is not None:
                facts_of_rounds.append({**output_facts(runs / "out"), "per_core_images_per_s": round_rate})
    entry: dict = {"files": n, "median_seconds": {t: statistics.median(s) for t, s in seconds.items() if s},
                   "seconds": seconds, "missing": [t for t, s in seconds.items() if not s]}
    # the round with the median scan rate (of an odd number of rounds: the median itself)
    by_rate = sorted(facts_of_rounds, key=lambda f: f["scan_images_per_s"] or 0)
    facts = by_rate[(len(by_rate) - 1) // 2] if by_rate else None
    if facts is not None:
        efficiencies = [f["scan_images_per_s"] / (cores * f["per_core_images_per_s"]) for f in facts_of_rounds
                        if f["scan_images_per_s"]]
        facts = {**facts, "scan_images_per_s_rounds": [f["scan_images_per_s"] for f in facts_of_rounds],
                 "per_core_images_per_s_rounds": [f["per_core_images_per_s"] for f in facts_of_rounds],
                 "efficiency_rounds": efficiencies}
        runs = work / "runs" / name
        ours = entry["median_seconds"]["ood-ray"]
        entry["ood_ray"] = {**facts, "efficiency": statistics.median(efficiencies) if efficiencies else 0.0,
                            "tables": facts["tables"]}
        entry["ratios"] = {t: s / ours for t, s in entry["median_seconds"].items() if t != "ood-ray"}
        coalesced = query_seconds(runs / "out")
        cmd = command("ood-ray", folder, runs / "uncoalesced", args, "io.part_target_mb=0")
        (runs / "uncoalesced").mkdir(parents=True, exist_ok=True)
        if timed_run(cmd, runs / "uncoalesced.log") is not None:
            entry["queries_seconds"] = {"coalesced": coalesced, "uncoalesced": query_seconds(runs / "uncoalesced" / "out"),
                                        "uncoalesced_part_files": output_facts(runs / "uncoalesced" / "out")["part_files"]}
    return entry


def print_table(results: dict) -> None:
    tools = ["ood-ray", "dataeval", "cleanvision", "imagededup", "fastdup"]
    print(f"\n{'set':<15}{'files':>7}" + "".join(f"{t:>13}" for t in tools) + f"{'scan img/s':>12}{'efficiency':>11}{'executor':>9}")
    for name, entry in results["sets"].items():
        cells = []
        for tool in tools:
            s = entry["median_seconds"].get(tool)
            ratio = entry.get("ratios", {}).get(tool)
            cells.append(f"{'-':>13}" if s is None else f"{s:>7.1f}s" + (f" {ratio:>4.1f}x" if ratio else f"{'':>5}"))
        ours = entry.get("ood_ray", {})
        print(f"{name:<15}{entry['files']:>7}" + "".join(cells)
              + f"{ours.get('scan_images_per_s') or 0:>12,.0f}{ours.get('efficiency', 0):>11.0%}{ours.get('executor') or '-':>9}")
        if ours.get("efficiency_rounds"):
            print(f"{'':<22}rounds: scan " + ", ".join(f"{r:,.0f}" for r in ours["scan_images_per_s_rounds"])
                  + " images/s; per-core " + ", ".join(f"{r:,.0f}" for r in ours["per_core_images_per_s_rounds"])
                  + "; efficiency " + ", ".join(f"{e:.0%}" for e in ours["efficiency_rounds"]))
        if ours.get("tables"):
            print(f"{'':<22}part files: " + ", ".join(f"{t} {v['files']} ({v['mb']:.1f} MB)" for t, v in ours["tables"].items()))
        if "queries_seconds" in entry:
            q = entry["queries_seconds"]
            print(f"{'':<22}DuckDB count(*) / filtered: {q['coalesced']['count'] * 1e3:.1f} / {q['coalesced']['filtered'] * 1e3:.1f} ms "
                  f"({ours.get('part_files')} files) vs {q['uncoalesced']['count'] * 1e3:.1f} / {q['uncoalesced']['filtered'] * 1e3:.1f} ms "
                  f"({q['uncoalesced_part_files']} files, io.part_target_mb=0)")
    print("(median wall seconds per tool; Nx = that tool's time / ood-ray's, above 1 = ood-ray faster; efficiency = ood-ray's "
          "scan images/s / (cores x the per-core rate measured before the round), median of the rounds)")


if __name__ == "__main__":
    sys.exit(main())
