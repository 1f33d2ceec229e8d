"""What surviving a crash costs: the ledger on the scan, the work a resume redoes, the time to resume.

On a folder of CIFAR-10 test JPEGs (``../shared/data``), each run a ``ood-ray audit`` process as
a user starts it (its own local Ray), alternated to share the machine's drift:

- ``ledger`` / ``no ledger``: the same audit with ``ray.ledger`` on (the default: every scan part
  recorded for ``--resume``) and off; ratio of the scan stage's seconds (target <= 1.03);
- ``kill at 50% + resume``: the driver is SIGKILLed when half of the scan's parts are recorded,
  then ``--resume`` runs; reported: rows kept, rows scanned again, rows decoded twice (decoded
  before the kill, from the last progress reading, and not kept) against the task slots x block
  size (target: at most one block per slot), and the resume's wall time against an uninterrupted
  run's.

Usage: ``python benchmarks/bench_resume.py [--images 10000] [--repeats 3] [--json PATH]``
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402


def copy_cifar(target: Path, n: int) -> None:
    files = sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))
    for i in range(n):
        f = files[i % len(files)]
        path = target / "test" / f.parent.name / f"{i // len(files)}_{f.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, path)


def command(source: Path, out: Path, *sets: str, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "ood_ray.cli", "audit", str(source), "--out", str(out), "--overwrite",
            "--set", "ray.num_cpus=2", "--set", "ray.progress_interval_s=1", "--set", "io.rows_per_block=256",
            "--set", "lint.enabled=false", "--set", "dedup.enabled=false", "--set", "drift.enabled=false"]
    for value in sets:
        args += ["--set", value]
    return args + (["--resume"] if resume else [])


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}


def run(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env(), cwd=str(REPO))
    seconds = time.perf_counter() - started
    out = Path(args[args.index("--out") + 1])
    return seconds, json.loads((out / "run.json").read_text())


def kill_at(args: list[str], out: Path, parts: int) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=str(REPO))
    while len(glob.glob(str(out / "_runs" / "*" / "_ledger" / "parts" / "*.json"))) < parts:
        if process.poll() is not None:
            raise RuntimeError("the audit ended before the kill point")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "resume.json"))
    args = parser.parse_args()
    if prepare() is None:
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "src", Path(tmp) / "out"
        copy_cifar(source, args.images)
        scans = {"ledger": [], "no ledger": []}
        walls = {"ledger": [], "no ledger": []}
        for repeat in range(args.repeats):
            order = ("ledger", "no ledger") if repeat % 2 == 0 else ("no ledger", "ledger")
            for name in order:
                wall, committed = run(command(source, out, f"ray.ledger={'true' if name == 'ledger' else 'false'}"))
                scans[name].append(committed["stage_seconds"]["scan"])
                walls[name].append(wall)
        blocks = -(-args.images // 256)
        resumes = []
        for _ in range(args.repeats):
            killed_after = kill_at(command(source, out), out, blocks // 2)
            wall, committed = run(command(source, out, resume=True))
            resumes.append({"killed_after_s": round(killed_after, 2), "resume_wall_s": round(wall, 2), **committed["resume"],
                            "resume_scan_s": committed["stage_seconds"]["scan"]})
    slots = 2  # ray.num_cpus / ray.task_num_cpus
    result = {
        "images": args.images, "rows_per_block": 256, "task_slots": slots,
        "scan_seconds": {k: statistics.median(v) for k, v in scans.items()},
        "ledger_ratio": statistics.median(scans["ledger"]) / statistics.median(scans["no ledger"]),
        "wall_seconds": {k: statistics.median(v) for k, v in walls.items()},
        "resumes": resumes,
        "uninterrupted_wall_s": statistics.median(walls["ledger"]),
    }
    print(f"{'run':<22}{'scan s (median)':>16}{'wall s':>10}")
    for name in scans:
        print(f"{name:<22}{result['scan_seconds'][name]:>16.2f}{result['wall_seconds'][name]:>10.2f}")
    print(f"ledger cost on the scan: x{result['ledger_ratio']:.3f} (target <= 1.03)")
    print(f"{'kill at 50%':<14}{'kept':>8}{'again':>8}{'twice >=':>10}{'1 block/slot':>14}{'resume s':>10}{'full run s':>11}")
    for r in resumes:
        print(f"{'':<14}{r['rows_kept']:>8}{r['rows_scanned_again']:>8}{r['decoded_twice_at_least']:>10}"
              f"{slots * 256:>14}{r['resume_wall_s']:>10.1f}{result['uninterrupted_wall_s']:>11.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
