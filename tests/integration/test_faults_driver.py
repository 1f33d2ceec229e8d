"""The driver killed for real (SIGKILL) mid-scan, during kNN, between stages, after the coalesced
parts are written and during the commit,
then ``--resume``: equal tables, nothing visible but committed files, no Ray process left behind;
and two audits into one output directory."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pytest

from ood_ray.run.layout import read_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import (  # noqa: E402
    EMBEDDER,
    audit_command,
    comparable,
    differences,
    kill_driver,
    ledger_parts,
    make_dataset,
    same_rows,
    start,
    wait_for,
)

TABLES = ("images", "channels", "embeddings", "neighbors", "duplicates", "lint", "clusters", "drift")
SETS = (EMBEDDER, "io.rows_per_block=8", "embed.batch_size=8")
# The module fixture runs seven audits (a baseline, five killed, the resume): ~4 minutes here, more on a
# slower CI machine, and its time counts against the first test that uses it.
pytestmark = pytest.mark.timeout(900)


def plain_glob_rows(out: Path) -> int:
    import duckdb

    files = glob.glob(str(out / "images" / "*.parquet"))
    return duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0] if files else 0


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("driver-faults")
    source = make_dataset(base / "data", per_class=20)
    out = base / "out"
    logs = base / "logs"
    logs.mkdir()
    baseline = start(audit_command(str(source), str(out), *SETS), logs / "baseline.log")
    assert baseline.wait(timeout=300) == 0, (logs / "baseline.log").read_text()[-3000:]
    expected = {table: comparable(out, table) for table in TABLES}
    committed = read_run(str(out))
    steps = []

    def attempt(name, trigger, resume=True, **env):
        process = start(audit_command(str(source), str(out), *SETS, resume=resume, overwrite=not resume),
                        logs / f"{name}.log", **env)
        log = logs / f"{name}.log"
        fired = wait_for(lambda: trigger(log), timeout=240, process=process)
        assert fired and process.poll() is None, f"{name}: never reached its kill point\n" + log.read_text()[-3000:]
        leftovers = kill_driver(process)
        steps.append({"name": name, "leftover_processes": leftovers, "visible_rows": plain_glob_rows(out),
                      "committed": read_run(str(out))["run_id"]})

    attempt("mid-scan", lambda log: ledger_parts(out) >= 3, resume=False)
    attempt("during-knn", lambda log: "stage knn: started" in log.read_text(errors="replace"))
    attempt("between-stages", lambda log: "pausing at before:structure" in log.read_text(errors="replace"),
            OOD_RAY_PAUSE_AT="before:structure")
    attempt("during-compact", lambda log: "pausing at compact:written" in log.read_text(errors="replace"),
            OOD_RAY_PAUSE_AT="compact:written")
    attempt("during-commit", lambda log: "pausing at switch" in log.read_text(errors="replace"),
            OOD_RAY_PAUSE_AT="switch")
    final = start(audit_command(str(source), str(out), *SETS, resume=True), logs / "final.log")
    assert final.wait(timeout=300) == 0, (logs / "final.log").read_text()[-3000:]
    return {"out": out, "expected": expected, "committed": committed, "steps": steps, "logs": logs}


def test_after_every_kill_only_the_committed_run_is_visible(killed_and_resumed):
    rows = killed_and_resumed["committed"]["rows_out"]
    for step in killed_and_resumed["steps"]:
        assert step["committed"] == killed_and_resumed["committed"]["run_id"], step
        assert step["visible_rows"] == rows, step


def test_no_ray_process_outlives_a_killed_driver(killed_and_resumed):
    for step in killed_and_resumed["steps"]:
        assert step["leftover_processes"] == [], step


def test_the_resumed_run_equals_an_uninterrupted_one(killed_and_resumed):
    out = killed_and_resumed["out"]
    run = read_run(str(out))
    assert run["run_id"] != killed_and_resumed["committed"]["run_id"]
    assert run["objects_in"] == run["rows_out"] == killed_and_resumed["committed"]["rows_out"]
    for table in TABLES:
        got = comparable(out, table)
        assert same_rows(got, killed_and_resumed["expected"][table]), (table, differences(got, killed_and_resumed["expected"][table]))
    resume = run["resume"]
    assert resume["resumes"] == 5
    assert 0 < resume["rows_kept"] < run["objects_in"]
    assert resume["rows_kept"] + resume["rows_scanned_again"] == run["objects_in"]
    # Only the committed run's folder is left, and its ledger and staging are gone.
    assert sorted(p.name for p in (out / "_runs").iterdir()) == [run["run_id"]]
    assert not (out / "_runs" / run["run_id"] / "_ledger").exists()
    assert not (out / "_lease.json").exists()


def test_resume_refuses_other_inputs_and_says_what_differs(killed_and_resumed, tmp_path):
    out = tmp_path / "out"
    source = make_dataset(tmp_path / "data", per_class=6)
    process = start(audit_command(str(source), str(out)), tmp_path / "a.log", OOD_RAY_PAUSE_AT="before:lint")
    assert wait_for(lambda: "pausing at before:lint" in (tmp_path / "a.log").read_text(errors="replace"), 240, process=process)
    kill_driver(process)
    (source / "test" / "red" / "extra.png").write_bytes((source / "test" / "red" / "red_000.png").read_bytes())
    refused = start(audit_command(str(source), str(out), "lint.method=iqr", resume=True), tmp_path / "b.log")
    assert refused.wait(timeout=120) == 2
    text = (tmp_path / "b.log").read_text()
    assert "cannot be resumed" in text and "lint.method: 'adaptive' then, 'iqr' now" in text and "input manifest" in text


def test_a_second_audit_into_the_same_out_refuses_then_takes_over_a_dead_ones_lease(tmp_path):
    source = make_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    first = start(audit_command(str(source), str(out)), tmp_path / "first.log", OOD_RAY_PAUSE_AT="commit")
    assert wait_for(lambda: "pausing at commit" in (tmp_path / "first.log").read_text(errors="replace"), 240, process=first)
    holder = json.loads((out / "_lease.json").read_text())
    second = start(audit_command(str(source), str(out)), tmp_path / "second.log")
    assert second.wait(timeout=60) == 2
    text = (tmp_path / "second.log").read_text()
    assert f"run {holder['run_id']} is writing there" in text and f"pid {first.pid}" in text
    kill_driver(first)
    third = start(audit_command(str(source), str(out)), tmp_path / "third.log")
    assert third.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-3000:]
    text = (tmp_path / "third.log").read_text()
    assert f"taking over the lease of run {holder['run_id']}" in text and "is gone" in text
    assert read_run(str(out))["rows_out"] == 20


SPAWNING_DRIVER = """
import time, ray
from ood_ray.run.ray_runtime import start_ray
start_ray(num_cpus=2, object_store_memory_mb=200)
@ray.remote(num_cpus=0)
class Idle:
    pass
held = []
print("spawning", flush=True)
while True:
    held.append(Idle.remote())
    time.sleep(0.05)
"""


def test_workers_forked_just_before_the_kill_die_with_the_driver(tmp_path):
    """A driver that keeps starting actors (as stages do when they start) is killed at odd moments:
    workers the raylet forked since the reaper last read the process tree die too."""
    for attempt, delay in enumerate((2.0, 2.37, 2.74, 3.11)):
        log = tmp_path / f"spawn{attempt}.log"
        process = start([sys.executable, "-c", SPAWNING_DRIVER], log)
        assert wait_for(lambda: "spawning" in log.read_text(errors="replace"), 120, process=process), log.read_text()
        wait_for(lambda: False, timeout=delay)
        assert kill_driver(process) == [], (attempt, log.read_text()[-2000:])
