"""Helpers of the fault tests: a small labelled dataset, audits in their own processes, real kills,
and the comparison of two runs' tables. Nothing here imitates a fault: processes are killed with
``SIGKILL``, found by their pid or their Ray process title."""

from __future__ import annotations

import glob
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "tests" / "models"
EMBEDDER = "models=[{name: 'custom_models:channel_stats_embedder', alias: stats}]"

#: Columns that legitimately differ between two runs of the same input.
RUN_SPECIFIC: set[str] = set()


def make_dataset(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """``train``/``test`` x three labels of distinct 40 x 40 pictures, plus two broken files."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label, base in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 30, (40, 40, 3))
                pixels = np.clip(np.asarray(base)[None, None, :] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{label}_{i:03d}.png")
    (root / "test" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (root / "test" / "blue" / "empty.png").write_bytes(b"")
    return root


def audit_command(source: str, out: str, *sets: str, resume: bool = False, overwrite: bool = False) -> list[str]:
    command = [sys.executable, "-m", "ood_ray.cli", "audit", source, "--out", out, "--set", "ray.num_cpus=2",
               "--set", "ray.object_store_memory_mb=200", "--set", "ray.progress_interval_s=0.5"]
    for value in sets:
        command += ["--set", value]
    if resume:
        command.append("--resume")
    if overwrite:
        command.append("--overwrite")
    return command


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OOD_RAY_PAUSE_AT")}
    env["PYTHONPATH"] = os.pathsep.join([str(MODELS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start(command: list[str], log_path: Path, **env: str) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment(**env), cwd=str(REPO))


def wait_for(predicate, timeout: float = 120.0, every: float = 0.05, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            return predicate()
        time.sleep(every)
    return False


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``pid``."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)], starts[int(entry)] = int(fields[1]), fields[19]
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier and p not in found}
        found |= frontier
    return [(p, starts[p]) for p in found]


def _alive(pid: int, start_time: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19] == start_time and fields[0] != "Z"
    except OSError:
        return False


def kill_driver(process: subprocess.Popen, grace_s: float = 10.0) -> list[int]:
    """SIGKILL the driver; returns the processes it started that are still alive ``grace_s`` later."""
    below = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    wait_for(lambda: not [p for p, t in below if _alive(p, t)], timeout=grace_s, every=0.2)
    return [p for p, t in below if _alive(p, t)]


def ledger_parts(out: Path) -> int:
    return len(glob.glob(str(out / "_runs" / "*" / "_ledger" / "parts" / "*.json")))


def worker_pids(title: str) -> list[int]:
    """Ray worker processes whose title (``ray::...``) contains ``title``."""
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::") and title in cmdline:
            pids.append(int(path.split("/")[2]))
    return pids


def comparable(out: Path, table: str) -> list[dict]:
    """A table's rows in a canonical order (every column), for comparing two runs."""
    from ood_ray.query import run_query

    rows = run_query(str(out), f"SELECT * FROM {table}").to_pylist()
    for row in rows:
        for name in RUN_SPECIFIC:
            row.pop(name, None)
    return sorted(rows, key=lambda r: (repr(sorted((k, _rounded(v)) for k, v in r.items())),
                                       repr(sorted((k, repr(v)) for k, v in r.items()))))


def _rounded(value: object) -> str:
    """A value's ``repr`` with floats to 4 significant digits: the sort key that pairs two runs' rows
    even where a float differs in its last bits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_rounded(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_rounded(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


#: How far two runs' floats may differ and still be the same value: float32 rounding of a float64
#: computation, whose last bits depend on how rows were batched (BLAS kernels differ with the
#: block's shape; a Mahalanobis distance through a near-singular pseudo-inverse shows it).
REL_TOL, ABS_TOL = 1e-5, 1e-7


def same_value(x: object, y: object) -> bool:
    """Equal, floats (also inside lists and dicts) to :data:`REL_TOL` / :data:`ABS_TOL`, NaN == NaN."""
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(same_value(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
    return x == y


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Two :func:`comparable` results hold the same rows (see :func:`same_value`)."""
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))


def differences(a: list[dict], b: list[dict], limit: int = 5) -> str:
    """Where two :func:`comparable` results differ, for an assertion's message: the row counts, or
    the first ``limit`` differing rows (paired by ``image_id`` when that identifies them) with the
    columns that differ and both values."""
    if len(a) != len(b):
        return f"{len(a)} rows against {len(b)}"
    ids = [row.get("image_id") for row in a]
    if None not in ids and len(set(ids)) == len(ids) and sorted(ids) == sorted(row.get("image_id") for row in b):
        by_id = {row["image_id"]: row for row in b}
        pairs = [(row, by_id[row["image_id"]]) for row in a]
    else:
        pairs = list(zip(a, b))
    found = []
    for x, y in pairs:
        if not same_value(x, y):
            columns = sorted(k for k in set(x) | set(y) if not same_value(x.get(k), y.get(k)))
            found.append(f"{x.get('image_id', '?')}: " + ", ".join(f"{k} {x.get(k)!r} vs {y.get(k)!r}" for k in columns))
            if len(found) == limit:
                break
    return "; ".join(found) or "equal"
