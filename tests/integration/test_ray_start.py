"""A run without an address starts its own Ray even when ``ray start`` left the address of a
cluster that is gone in Ray's ``ray_current_cluster`` file (a plain ``ray.init()`` would wait
for that cluster for about 14 minutes). In a subprocess with its own Ray temp folder, so the test
session's Ray and this machine's ``/tmp/ray`` are not touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_START = """
import json
import ray
from ood_ray.run.ray_runtime import start_ray
start_ray()
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "cpus": ray.cluster_resources().get("CPU")}))
ray.shutdown()
"""


def test_a_stale_ray_start_address_does_not_stop_a_local_ray(closed_port):
    stale = f"127.0.0.1:{closed_port}"
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live below it
    try:
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text(stale)
        env = {**os.environ, "RAY_TMPDIR": temp}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-c", _START], capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        started = json.loads(done.stdout.strip().splitlines()[-1])
        assert started["gcs"] != stale and started["cpus"] == os.cpu_count()  # a Ray of its own on this machine
    finally:
        shutil.rmtree(temp, ignore_errors=True)
