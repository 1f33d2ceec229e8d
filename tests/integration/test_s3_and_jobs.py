"""The same audit reading from and writing to a real S3 server, and as a submitted Ray job."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from ood_ray.config import load_config
from ood_ray.io import storage
from ood_ray.run.layout import read_run
from ood_ray.pipeline import run_audit
from ood_ray.query import run_query

REPO = Path(__file__).resolve().parents[2]
DATA_BUCKET = "oodray-data"
RESULTS_BUCKET = "oodray-results"


@pytest.fixture(scope="module")
def s3_dataset(s3_server, demo_dataset):
    client = s3_server["client"]
    for bucket in (DATA_BUCKET, RESULTS_BUCKET):
        client.create_bucket(Bucket=bucket)
    root = demo_dataset["root"]
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "PLANTED.json":
            client.put_object(Bucket=DATA_BUCKET, Key=f"demo/{path.relative_to(root).as_posix()}", Body=path.read_bytes())
    return {"images": f"s3://{DATA_BUCKET}/demo/images", "manifest": f"s3://{DATA_BUCKET}/demo/manifest.csv"}


@pytest.fixture(scope="module")
def s3_run(ray_session, s3_dataset):
    out = f"s3://{RESULTS_BUCKET}/runs/folder"
    run = run_audit(load_config(None, ["io.rows_per_block=20"], source=s3_dataset["images"], out=out))
    return {"out": out, "run": run}


def test_s3_audit_matches_the_local_audit(s3_run, demo_dataset, tmp_path):
    local = run_audit(load_config(None, [], source=str(demo_dataset["images"]), out=str(tmp_path / "local")))
    run = s3_run["run"]
    assert run["rows_out"] == run["objects_in"] == local["objects_in"]
    assert run["status_counts"] == local["status_counts"]
    assert run["dedup"]["groups"] == local["dedup"]["groups"]
    remote = run_query(s3_run["out"], "SELECT regexp_extract(uri, 'images/(.*)$', 1) AS p, mean, phash, status FROM images ORDER BY p")
    here = run_query(str(tmp_path / "local"), "SELECT regexp_extract(uri, 'images/(.*)$', 1) AS p, mean, phash, status FROM images ORDER BY p")
    assert remote.to_pylist() == here.to_pylist()
    assert all(uri.startswith(f"s3://{DATA_BUCKET}/") for uri in run_query(s3_run["out"], "SELECT uri FROM images").column(0).to_pylist())


def test_s3_run_directory_is_committed_and_queryable(s3_run, s3_server):
    run = read_run(s3_run["out"])
    assert run["run_id"] == s3_run["run"]["run_id"]
    listed = s3_server["client"].list_objects_v2(Bucket=RESULTS_BUCKET, Prefix="runs/folder/")["Contents"]
    keys = {obj["Key"].split("/", 2)[2] for obj in listed}
    assert "run.json" in keys
    for table, info in run["tables"].items():
        assert {f"{table}/{name}" for name in info["files"]} <= keys
    leakage = run_query(s3_run["out"], "SELECT count(DISTINCT group_id) FROM leakage").column(0)[0].as_py()
    assert leakage == 1


def test_credentials_never_reach_run_json_or_logs(s3_run, s3_server, caplog):
    text = storage.read_bytes(f"{s3_run['out']}/run.json").decode()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert os.environ["AWS_ACCESS_KEY_ID"] not in text
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in caplog.text


def test_report_of_a_run_on_s3_with_thumbnails_from_s3(s3_run, tmp_path):
    from ood_ray.report import build_report

    result = build_report(s3_run["out"], str(tmp_path / "report"))
    assert result.sections == ["overview", "lint", "quality", "duplicates", "drift"]
    assert result.thumbnails > 10 and result.thumbnails_missing == 0  # every shown image is an ok image read from S3
    assert len(list((tmp_path / "report" / "thumbs").glob("*.jpg"))) == result.thumbnails
    html = (tmp_path / "report" / "report.html").read_text()
    assert f"s3://{DATA_BUCKET}/demo/images/" in html and os.environ["AWS_SECRET_ACCESS_KEY"] not in html


def test_s3_manifest_with_a_missing_object_and_overwrite(ray_session, s3_dataset, demo_dataset):
    out = f"s3://{RESULTS_BUCKET}/runs/manifest"
    first = run_audit(load_config(None, [], source=s3_dataset["manifest"], out=out))
    assert first["status_counts"]["missing"] == 1
    second = run_audit(load_config(None, ["overwrite=true"], source=s3_dataset["manifest"], out=out))
    count = run_query(out, "SELECT count(*) FROM images").column(0)[0].as_py()
    assert count == second["objects_in"] == len(demo_dataset["planted"]["files"]) + 1
    listed = storage.list_files(f"{out}/images")
    assert all(second["run_id"] in uri for uri, _ in listed)


def test_submitted_job_writes_a_committed_run(ray_session, demo_dataset, tmp_path):
    """``ray job submit -- python jobs/audit.py ...`` through the job submission API."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_session["dashboard"])
    out = tmp_path / "job-run"
    entrypoint = f"{sys.executable} jobs/audit.py {demo_dataset['images']} --out {out} --set io.rows_per_block=25"
    runtime_env = {"working_dir": str(REPO), "excludes": [".venv", ".git"]}
    for attempt in range(30):  # the head's job agent starts lazily: "No available agent ... try again later"
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or attempt == 29:
                raise
            time.sleep(2)
    deadline = time.monotonic() + 300
    while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-3000:]
    assert "connecting to Ray at" in logs  # it joined the cluster rather than starting its own
    run = read_run(str(out))
    assert run["rows_out"] == len(demo_dataset["planted"]["files"])
    assert run["config"]["io"]["rows_per_block"] == 25


def test_checkpoint_read_back_from_s3(s3_server, s3_dataset, tmp_path):
    import torch

    from ood_ray.config import ModelConfig
    from ood_ray.embed.models import build_model, inspect_models

    model = build_model(ModelConfig(name="test_resnet", num_classes=5))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05)
    local = tmp_path / "w.pth"
    torch.save(model.state_dict(), local)
    s3_server["client"].put_object(Bucket=RESULTS_BUCKET, Key="models/w.pth", Body=local.read_bytes())
    uri = f"s3://{RESULTS_BUCKET}/models/w.pth"
    info = inspect_models([ModelConfig(name="test_resnet", num_classes=5, checkpoint=uri)])[0]
    assert info.provenance["checkpoint"] == uri and len(info.provenance["checkpoint_sha256"]) == 64
    loaded = build_model(ModelConfig(name="test_resnet", num_classes=5, checkpoint=uri))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_autoencoder_trains_with_ray_train_storage_on_s3(ray_session, s3_dataset, s3_server):
    """Ray Train keeps its checkpoint under the run's S3 staging folder; the weights become an
    artifact of the run, and staging is gone after the commit."""
    out = f"s3://{RESULTS_BUCKET}/runs/autoencoder"
    run = run_audit(load_config(None, ["io.rows_per_block=20", "autoencoder.enabled=true", "autoencoder.epochs=2",
                                       "autoencoder.image_size=16"], source=s3_dataset["images"], out=out))
    saved = run["ood"]["autoencoder"]
    assert saved["train_images"] > 0 and saved["file"].startswith("autoencoder/")
    counts = run_query(out, "SELECT count(*) FILTER (WHERE status = 'ok'), count(score_recon) FROM images").to_pylist()[0]
    assert list(counts.values())[0] == list(counts.values())[1] > 0
    keys = {obj["Key"] for obj in s3_server["client"].list_objects_v2(Bucket=RESULTS_BUCKET, Prefix="runs/autoencoder/")["Contents"]}
    assert f"runs/autoencoder/{saved['file']}" in keys
    assert not [key for key in keys if "/_staging/" in key]
    assert run_query(out, "SELECT count(*) AS n FROM drift WHERE split = 'test'").to_pylist()[0]["n"] > 0
