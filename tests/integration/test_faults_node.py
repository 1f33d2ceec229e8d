"""Two Ray nodes on one machine (two raylets, ``tests/corpus/node_loss.py``): the full audit with a
model gives the same tables as on a single node; and a node lost mid-run -- the second (with the
kNN shards on it) killed while the kNN stage queries -- still finishes and
reconciles, with tables equal to an undisturbed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import (  # noqa: E402
    REPO,
    audit_command,
    comparable,
    differences,
    environment,
    make_dataset,
    same_rows,
)
from node_loss import SETS  # noqa: E402

TABLES = ("images", "channels", "embeddings", "neighbors", "duplicates", "lint", "clusters", "drift")


def test_two_nodes_equal_one_node_and_losing_a_node_keeps_every_row(tmp_path):
    source = make_dataset(tmp_path / "data", per_class=12)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "corpus" / "node_loss.py"), str(source), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=environment(), cwd=str(REPO))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert "IndexShard" in result["removed"]["helpers_on_lost_node"], result
    objects_in, rows_out = result["rows"]
    assert objects_in == rows_out == 3 * 18 + 2
    for table in TABLES:
        disturbed, baseline = comparable(tmp_path / "disturbed", table), comparable(tmp_path / "baseline", table)
        assert same_rows(disturbed, baseline), (table, differences(disturbed, baseline))
    # The same audit on one node (its own local Ray) equals the two-node run, table by table.
    single = subprocess.run(audit_command(str(source), str(tmp_path / "single"), *SETS),
                            capture_output=True, text=True, timeout=900, env=environment(), cwd=str(REPO))
    assert single.returncode == 0, single.stderr[-4000:]
    for table in TABLES:
        rows, baseline = comparable(tmp_path / "single", table), comparable(tmp_path / "baseline", table)
        assert same_rows(rows, baseline), (table, differences(rows, baseline))
        assert rows or table == "lint", table  # every table but lint holds rows here
