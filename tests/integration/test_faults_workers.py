"""Ray worker processes killed by pid during decode, embedding, kNN and finalize: the job finishes
with tables equal to an undisturbed run (task retries, the embedding actor restarted, kNN shards
restarted and rebuilt from the staged files)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ood_ray.config import load_config
from ood_ray.pipeline import run_audit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import (  # noqa: E402
    EMBEDDER,
    MODELS_DIR,
    comparable,
    differences,
    make_dataset,
    same_rows,
    worker_pids,
)

TABLES = ("images", "channels", "embeddings", "predictions", "neighbors", "duplicates", "lint", "clusters", "drift")
SETS = [EMBEDDER, "io.rows_per_block=8", "embed.batch_size=8"]

#: (what, a process title to kill, a title that must be present too: the stage is at work)
TARGETS = (
    ("decode", "MapBatches(scan_blocks)", None),
    ("embedding actor", "MapWorker(MapBatches(EmbedActor))", "MapBatches(scan_blocks)"),
    ("kNN shard", "ray::IndexShard", "query_staged_files"),
    ("finalize", "MapBatches(finalize_files)", None),
)


class TitleKiller(threading.Thread):
    """SIGKILLs, once each, the first Ray worker found with each target's title."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.killed) < len(TARGETS):
            for what, title, alongside in TARGETS:
                if what in self.killed:
                    continue
                pids = [p for p in worker_pids(title) if not _title(p).endswith(".__init__")]
                if pids and (alongside is None or worker_pids(alongside)):
                    try:
                        os.kill(pids[0], signal.SIGKILL)
                        self.killed[what] = pids[0]
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def disturbed(ray_session, tmp_path_factory):
    sys.path.insert(0, str(MODELS_DIR))
    base = tmp_path_factory.mktemp("worker-faults")
    source = make_dataset(base / "data")
    run_audit(load_config(None, SETS, source=str(source), out=str(base / "undisturbed")))
    killer = TitleKiller()
    killer.start()
    try:
        run = run_audit(load_config(None, SETS, source=str(source), out=str(base / "disturbed")))
    finally:
        killer.stop.set()
        killer.join()
    return {"base": base, "run": run, "killed": killer.killed}


def test_every_kind_of_worker_was_killed(disturbed):
    assert sorted(disturbed["killed"]) == sorted(what for what, _, _ in TARGETS), disturbed["killed"]


def test_tables_equal_an_undisturbed_run(disturbed):
    run = disturbed["run"]
    assert run["objects_in"] == run["rows_out"]
    for table in TABLES:
        got, want = comparable(disturbed["base"] / "disturbed", table), comparable(disturbed["base"] / "undisturbed", table)
        assert same_rows(got, want), (table, differences(got, want))
