"""A node lost mid-run: two Ray nodes on this machine, the second (with the progress actor and the
kNN shards on it) killed while the kNN stage queries; the job finishes and reconciles, with tables
equal to an undisturbed run on the same cluster (``tests/corpus/node_loss.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import REPO, comparable, environment, make_dataset  # noqa: E402

TABLES = ("images", "channels", "embeddings", "neighbors", "duplicates", "lint", "clusters", "drift")


def test_losing_a_node_with_the_helpers_on_it_keeps_every_row(tmp_path):
    source = make_dataset(tmp_path / "data", per_class=12)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "corpus" / "node_loss.py"), str(source), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=environment(), cwd=str(REPO))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert "IndexShard" in result["removed"]["helpers_on_lost_node"], result
    objects_in, rows_out = result["rows"]
    assert objects_in == rows_out == 3 * 18 + 2
    for table in TABLES:
        assert comparable(tmp_path / "disturbed", table) == comparable(tmp_path / "baseline", table), table
