"""Transient S3 faults, for real: a proxy on 127.0.0.1 in front of SeaweedFS answers 503 SlowDown,
resets or drops connections and delays answers; the audit (its own process, its own Ray, every
read and write through the proxy) exits 0, no existing object becomes a wrong ``missing`` row, the
results on S3 are complete, and a real 404 is still ``missing``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_ray.io import storage
from ood_ray.query import run_query
from ood_ray.run.layout import read_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from s3proxy import FaultProxy, every_request, object_reads  # noqa: E402

BUCKET = "oodray-faults"
OBJECTS = 60


@pytest.fixture(scope="module")
def s3_objects(s3_server, tmp_path_factory):
    client = s3_server["client"]
    client.create_bucket(Bucket=BUCKET)
    rng = np.random.default_rng(4)
    uris = []
    for i in range(OBJECTS):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
        key = f"data/{['cat', 'dog'][i % 2]}/img_{i:03d}.png"
        client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
        uris.append(f"s3://{BUCKET}/{key}")
    manifest = tmp_path_factory.mktemp("s3-manifest") / "manifest.csv"
    manifest.write_text("uri,label\n" + "".join(f"{u},{u.split('/')[-2]}\n" for u in uris)
                        + f"s3://{BUCKET}/data/cat/never_uploaded.png,cat\n")
    return {"manifest": manifest, "port": int(s3_server["endpoint"].rsplit(":", 1)[1])}


def audit_through(proxy: FaultProxy, manifest: Path, out: str, log: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["AWS_ENDPOINT_URL"] = proxy.endpoint
    env["OOD_RAY_S3_REQUEST_TIMEOUT_S"] = "5"
    command = [sys.executable, "-m", "ood_ray.cli", "audit", str(manifest), "--out", out, "--set", "ray.num_cpus=2",
               "--set", "ray.object_store_memory_mb=200", "--set", "io.rows_per_block=16",
               "--set", "io.retry_base_delay_s=0.02", "--set", "io.retry_max_delay_s=0.5"]
    with open(log, "wb") as f:
        return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)


def check_complete(out: str) -> None:
    run = read_run(out)
    assert run["objects_in"] == run["rows_out"] == OBJECTS + 1
    assert run["status_counts"] == {"ok": OBJECTS, "missing": 1}, run["status_counts"]
    missing = run_query(out, "SELECT uri, error FROM images WHERE status = 'missing'").to_pylist()
    assert missing[0]["uri"].endswith("never_uploaded.png") and missing[0]["error"]
    for table, info in run["tables"].items():  # every committed file is there and complete
        for name in info["files"]:
            assert storage.read_parquet(storage.join(out, table, name)).num_rows >= 0
        assert run_query(out, f"SELECT count(*) FROM {table}").column(0)[0].as_py() == info["rows"]


@pytest.mark.parametrize("name,decide,minimum", [
    ("reads-503", object_reads(0.3, seed=1), {"503": 10}),
    ("all-requests", every_request(0.1, seed=2), {"503": 2, "reset": 2, "drop": 2, "delay": 2}),
])
def test_transient_s3_faults_leave_no_wrong_rows(s3_objects, tmp_path, name, decide, minimum):
    proxy = FaultProxy(s3_objects["port"], decide, delay_s=2.0)
    out = f"s3://{BUCKET}/runs/{name}"
    try:
        done = audit_through(proxy, s3_objects["manifest"], out, tmp_path / "audit.log")
    finally:
        proxy.close()
    assert done.returncode == 0, (tmp_path / "audit.log").read_text()[-4000:]
    for action, count in minimum.items():
        assert proxy.counts[action] >= count, proxy.counts
    check_complete(out)


def test_a_run_on_s3_killed_between_stages_resumes_to_the_same_tables(ray_session, s3_objects, tmp_path):
    from ood_ray.config import load_config
    from ood_ray.pipeline import run_audit

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
    from faults import comparable, differences, kill_driver, same_rows, start, wait_for

    sets = ["io.rows_per_block=16"]
    baseline = f"s3://{BUCKET}/runs/resume-baseline"
    run_audit(load_config(None, sets, source=str(s3_objects["manifest"]), out=baseline))
    out = f"s3://{BUCKET}/runs/resume"
    command = [sys.executable, "-m", "ood_ray.cli", "audit", str(s3_objects["manifest"]), "--out", out,
               "--set", "ray.num_cpus=2", "--set", "ray.object_store_memory_mb=200", "--set", sets[0]]
    log = tmp_path / "killed.log"
    process = start(command, log, OOD_RAY_PAUSE_AT="before:dedup")
    assert wait_for(lambda: "pausing at before:dedup" in log.read_text(errors="replace"), 240, process=process)
    assert kill_driver(process) == []
    assert not storage.exists(f"{out}/run.json")
    assert storage.list_files(f"{out}/_runs")  # the interrupted run's parts and ledger, apart from any table
    resumed = run_audit(load_config(None, sets, source=str(s3_objects["manifest"]), out=out), resume=True)
    assert resumed["resume"]["resumes"] == 1 and resumed["stage_seconds"]["scan"] == 0.0
    for table in ("images", "channels", "lint", "duplicates"):
        got, want = comparable(out, table), comparable(baseline, table)
        assert same_rows(got, want), (table, differences(got, want))
    assert [uri for uri, _ in storage.list_files(f"{out}/_runs")] == []
