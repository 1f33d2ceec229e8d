"""The hostile corpus (``tests/corpus/hostile.py``) audited as a user would: one table per kind.

Builds the corpus, runs ``ood-ray audit`` in a subprocess (its own Ray; as root, with
``CAP_DAC_OVERRIDE`` dropped by ``setpriv`` so that permissions bite), and prints, per kind of
entry, how many entries there are, the statuses expected and observed, and every mismatch; then
the hostile manifest the same way. Writes ``benchmarks/results/hostile.json``.

Usage: ``python benchmarks/bench_hostile.py [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "corpus"))

from hostile import build_hostile_corpus, build_hostile_manifest, restore_permissions  # noqa: E402

DROP_CAPS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def audit(source: str, out: str, *sets: str) -> tuple[int, float, str]:
    prefix = DROP_CAPS if os.geteuid() == 0 and shutil.which("setpriv") else []
    command = [*prefix, sys.executable, "-m", "ood_ray.cli", "audit", source, "--out", out, "--set", "ray.num_cpus=2",
               "--set", "ray.object_store_memory_mb=200", *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    return done.returncode, time.perf_counter() - started, done.stderr[-2000:]


def fmt(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "hostile.json"))
    args = parser.parse_args()
    from ood_ray.query import run_query

    with tempfile.TemporaryDirectory() as tmp:
        root, out = os.path.join(tmp, "corpus"), os.path.join(tmp, "out")
        planted = build_hostile_corpus(root)
        code, seconds, stderr = audit(root, out, "io.max_decode_bytes=536870912")
        restore_permissions(root)
        if code != 0:
            print(stderr, file=sys.stderr)
            return 1
        rows = {r["uri"]: r for r in run_query(out, "SELECT uri, status, error FROM images").to_pylist()}
        by_kind: dict[str, dict] = defaultdict(lambda: {"files": 0, "expected": Counter(), "observed": Counter(), "mismatches": []})
        for entry in planted:
            row = rows.pop(entry.uri, None)
            observed = row["status"] if row else "no row"
            expected = entry.expected or "no row"
            kind = by_kind[entry.kind]
            kind["files"] += 1
            kind["expected"][expected] += 1
            kind["observed"][observed] += 1
            if observed != expected:
                kind["mismatches"].append({"uri": entry.uri, "expected": expected, "observed": observed,
                                           "error": row and row["error"]})
        manifest, expected_rows = build_hostile_manifest(os.path.join(tmp, "m"), os.path.join(root, "intact", "whole.png"))
        m_code, m_seconds, m_stderr = audit(manifest, os.path.join(tmp, "m-out"))
        notes = {r["note"]: r["status"] for r in run_query(os.path.join(tmp, "m-out"), "SELECT note, status FROM images").to_pylist()}
        manifest_kind = {"files": len(expected_rows), "expected": Counter(s for _, s, _ in expected_rows),
                         "observed": Counter(notes.get(n, "no row") for _, _, n in expected_rows),
                         "mismatches": [n for _, s, n in expected_rows if notes.get(n) != s]}
        by_kind["manifest cells"] = manifest_kind

    print(f"{'kind':<16}{'entries':>8}  {'expected':<44}{'observed':<44}")
    for name, kind in by_kind.items():
        print(f"{name:<16}{kind['files']:>8}  {fmt(kind['expected']):<44}{fmt(kind['observed']):<44}")
    total = sum(k["files"] for k in by_kind.values())
    mismatches = sum(len(k["mismatches"]) for k in by_kind.values())
    print(f"{total} entries, {mismatches} mismatches, unexpected extra rows: {len(rows)}; "
          f"audit exit codes {code} / {m_code}, {seconds:.1f} s / {m_seconds:.1f} s")
    result = {name: {**kind, "expected": dict(kind["expected"]), "observed": dict(kind["observed"])}
              for name, kind in by_kind.items()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"kinds": result, "extra_rows": list(rows), "exit_codes": [code, m_code]}, indent=2))
    print(f"wrote {args.json}")
    return 0 if mismatches == 0 and not rows else 1


if __name__ == "__main__":
    sys.exit(main())
