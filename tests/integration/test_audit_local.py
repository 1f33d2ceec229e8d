"""The audit end to end on the session's local Ray, on the demo dataset with planted defects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from ood_ray.cli import main as cli_main
from ood_ray.config import ConfigError, load_config
from ood_ray.lint.issues import ISSUES
from ood_ray.run.layout import read_run
from ood_ray.pipeline import run_audit
from ood_ray.query import run_query


def audit(source, out, *overrides):
    return run_audit(load_config(None, list(overrides), source=str(source), out=str(out)))


def by_relative_path(out, images_root) -> dict[str, dict]:
    rows = run_query(str(out), "SELECT * FROM images").to_pylist()
    prefix = str(images_root) + "/"
    return {r["uri"][len(prefix):]: r for r in rows}


@pytest.fixture(scope="module")
def folder_run(ray_session, demo_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "folder"
    run = audit(demo_dataset["images"], out, "io.rows_per_block=16")
    return {"out": out, "run": run, "rows": by_relative_path(out, demo_dataset["images"])}


def test_rows_out_equal_objects_in_with_exact_status_counts(folder_run, demo_dataset):
    planted = demo_dataset["planted"]
    run = folder_run["run"]
    assert run["objects_in"] == run["rows_out"] == len(planted["files"]) == len(folder_run["rows"])
    expected = Counter(planted["status"].values())
    expected["ok"] = len(planted["files"]) - len(planted["status"])
    assert run["status_counts"] == dict(expected)
    for path, status in planted["status"].items():
        row = folder_run["rows"][path]
        assert row["status"] == status, path
        assert row["error"]
        assert row["mean"] is None and row["hash_pixels"] is None


def test_split_label_and_every_mode_and_format(folder_run):
    ok = [r for r in folder_run["rows"].values() if r["status"] == "ok"]
    assert {r["format"] for r in ok} == {"PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"}
    assert {"L", "RGB", "RGBA", "P", "CMYK", "I;16"} <= {r["mode"] for r in ok}
    assert {r["depth"] for r in ok} == {8, 16}
    row = folder_run["rows"]["train/circles/circles_000.png"]
    assert (row["split"], row["label"]) == ("train", "circles")
    assert row["file_size"] > 0 and len(row["hash_file"]) == 32 and row["phash"] is not None
    assert all(0.0 <= r["mean"] <= 1.0 and r["width"] * r["height"] == r["size"] for r in ok)


def test_channels_table_has_one_row_per_channel(folder_run):
    counts = run_query(str(folder_run["out"]), """
        SELECT i.image_id, i.channels, count(c.channel) AS n, min(c.channel) AS lo, max(c.channel) AS hi
        FROM images i LEFT JOIN channels c USING (image_id) WHERE i.status = 'ok' GROUP BY ALL""").to_pylist()
    assert all(r["n"] == r["channels"] and r["lo"] == 0 and r["hi"] == r["channels"] - 1 for r in counts)
    # Whole-image mean = mean of channel means (equal-sized channels).
    check = run_query(str(folder_run["out"]), """
        SELECT max(abs(i.mean - c.m)) FROM images i JOIN (SELECT image_id, avg(mean) AS m FROM channels GROUP BY 1) c
        USING (image_id)""").column(0)[0].as_py()
    assert check < 1e-9


def _groups(out, images_root, kind):
    rows = run_query(str(out), f"""SELECT d.group_id, d.method, i.uri FROM duplicates d JOIN images i USING (image_id)
                                   WHERE d.kind = '{kind}'""").to_pylist()
    groups: dict[tuple, set] = {}
    for r in rows:
        groups.setdefault((r["group_id"], r["method"]), set()).add(r["uri"][len(str(images_root)) + 1:])
    return groups


def test_exact_and_near_duplicates_are_the_planted_ones(folder_run, demo_dataset):
    planted = demo_dataset["planted"]
    exact = _groups(folder_run["out"], demo_dataset["images"], "exact")
    assert sorted(map(sorted, exact.values())) == sorted(map(sorted, planted["exact"]))
    near = _groups(folder_run["out"], demo_dataset["images"], "near")
    found_by_phash = [members for (gid, method), members in near.items() if method == "phash"]
    for pair in planted["near"]:
        assert any(set(pair) <= members for members in found_by_phash), pair
    # Nothing else is grouped: every near group is one of the planted pairs.
    planted_sets = [set(p) for p in planted["near"]]
    assert all(members in planted_sets for members in near.values())


def test_leakage_lists_the_group_spanning_splits(folder_run, demo_dataset):
    rows = run_query(str(folder_run["out"]), "SELECT * FROM leakage").to_pylist()
    uris = {r["uri"][len(str(demo_dataset["images"])) + 1:] for r in rows}
    assert uris == {p for pair in demo_dataset["planted"]["leakage"] for p in pair}
    assert {r["split"] for r in rows} == {"train", "test"}


def test_lint_flags_the_planted_extremes(folder_run, demo_dataset):
    flagged = run_query(str(folder_run["out"]), "SELECT i.uri, l.metric FROM lint l JOIN images i USING (image_id)").to_pylist()
    per_image: dict[str, set] = {}
    for r in flagged:
        per_image.setdefault(r["uri"][len(str(demo_dataset["images"])) + 1:], set()).add(r["metric"])
    for path, metrics in demo_dataset["planted"]["extreme"].items():
        assert set(metrics) <= per_image.get(path, set()), (path, per_image.get(path))
    thresholds = folder_run["run"]["lint_thresholds"]
    assert thresholds["mean"]["all"]["method"] == "adaptive" and thresholds["mean"]["all"]["threshold"] == 3.5
    assert thresholds["sharpness"]["all"]["scale"] == "linear"
    for metric, side in (("edge_contrast", "both"), ("noise_ratio", "upper")):
        assert thresholds[metric]["all"]["scale"] == "log" and thresholds[metric]["all"]["side"] == side
    assert "p0" not in thresholds and "edge_p99" not in thresholds
    by_class = run_query(str(folder_run["out"]), "SELECT label, metric, flags FROM lint_by_class").to_pylist()
    assert sum(r["flags"] for r in by_class) == len(flagged)


def test_named_quality_issues_flag_the_planted_images(folder_run, demo_dataset):
    """Each planted extreme has its named issues; the drawn pictures are not dark, light or noise;
    every score lies in [0, 1]; run.json counts what the table holds."""
    rows = folder_run["rows"]
    planted = demo_dataset["planted"]["issues"]
    for path, issues in planted.items():
        flagged = {name for name in ISSUES if rows[path][f"is_{name}"]}
        assert set(issues) <= flagged, (path, flagged)
    pictures = [r for path, r in rows.items() if r["status"] == "ok" and path not in planted]
    assert len(pictures) > 20
    for name in ("dark", "light", "noisy", "low_information"):
        assert not [r["uri"] for r in pictures if r[f"is_{name}"]], name
    for r in rows.values():
        for name in ISSUES:
            score = r[f"score_{name}"]
            assert (score is None) == (r["status"] != "ok") and (score is None or 0 <= score <= 1), (r["uri"], name)
    quality = folder_run["run"]["quality"]
    counts = run_query(str(folder_run["out"]), "SELECT " + ", ".join(
        f"count(*) FILTER (WHERE is_{name}) AS {name}" for name in ISSUES) + " FROM images").to_pylist()[0]
    assert quality["flagged"] == counts
    assert quality["odd_size"]["q1"] <= quality["odd_size"]["q3"]
    # Named issue columns are not OOD scores: evaluate leaves them out.
    from ood_ray.evaluate import evaluate
    with pytest.raises(ConfigError, match="not in the run"):
        evaluate(str(folder_run["out"]), ood_splits=["test"], scores=["score_dark"])


def test_run_json_records_config_versions_and_timings(folder_run):
    run = read_run(str(folder_run["out"]))
    assert run["config"]["io"]["rows_per_block"] == 16
    assert {"ray", "pyarrow", "numpy", "pillow", "duckdb"} <= set(run["versions"])
    assert {"manifest", "scan", "lint", "dedup"} <= set(run["stage_seconds"])
    assert run["worker_seconds"]["decode_and_stats"] > 0
    assert run["tables"]["images"]["rows"] == run["objects_in"]
    # Several scan tasks wrote parts (16 rows per block), coalesced into one file.
    assert run["stages"]["scan"]["state"]["rows_per_block"] == 16
    assert run["stages"]["compact"]["state"]["tables"]["images"]["files_before"] > 1
    assert len(run["tables"]["images"]["files"]) == 1


def test_manifest_source_carries_columns_and_reports_missing(ray_session, demo_dataset, workdir):
    run = audit(demo_dataset["manifest"], workdir / "m")
    planted = demo_dataset["planted"]
    assert run["objects_in"] == len(planted["files"]) + 1
    assert run["status_counts"]["missing"] == 1
    rows = run_query(str(workdir / "m"), "SELECT uri, status, error, photographer, split FROM images").to_pylist()
    missing = [r for r in rows if r["status"] == "missing"]
    assert missing[0]["uri"].endswith("deleted_before_audit.png") and missing[0]["error"]
    assert all(r["photographer"].startswith("demo-") for r in rows)


def test_rerun_needs_overwrite_and_never_duplicates_rows(ray_session, demo_dataset, workdir):
    source = demo_dataset["images"]
    first = audit(source, workdir / "r")
    with pytest.raises(ConfigError, match="overwrite"):
        audit(source, workdir / "r")
    second = audit(source, workdir / "r", "overwrite=true", "lint.method=iqr")
    assert second["run_id"] != first["run_id"]
    table = pq.read_table(workdir / "r" / "images")  # plain glob of the folder, no run.json
    assert table.num_rows == first["objects_in"]
    assert set(run_query(str(workdir / "r"), "SELECT DISTINCT method FROM lint").column(0).to_pylist()) <= {"iqr"}


def test_cli_summary_and_query_formats(folder_run, capsys):
    out = str(folder_run["out"])
    assert cli_main(["summary", out]) == 0
    text = capsys.readouterr().out
    assert "truncated" in text and f"rows out: {folder_run['run']['rows_out']}" in text
    assert cli_main(["query", out, "SELECT status, count(*) AS n FROM images GROUP BY 1 ORDER BY 1", "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {r["status"]: r["n"] for r in lines} == folder_run["run"]["status_counts"]
    assert cli_main(["query", out, "SELECT count(*) AS n FROM images", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', str(folder_run["run"]["rows_out"])]
    assert cli_main(["query", out, "SELECT nope FROM images"]) == 1


def test_cli_audit_command_end_to_end(demo_dataset, workdir):
    """The installed command, in its own process with its own local Ray (``ray.local_max_rows=0``: the
    demo is small enough to run without Ray otherwise), as a user runs it; it exits right after the
    commit and its reaper stops the Ray it started."""
    result = subprocess.run(
        [sys.executable, "-m", "ood_ray", "audit", str(demo_dataset["images"]), "--out", str(workdir / "cli"),
         "--set", "ray.num_cpus=1", "--set", "ray.progress_interval_s=0.5", "--set", "ray.local_max_rows=0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "objects in: " in result.stdout
    assert "decode: " in result.stderr and "/s, eta" in result.stderr  # the periodic progress line, per stage
    run = read_run(str(workdir / "cli"))
    assert run["rows_out"] == len(demo_dataset["planted"]["files"]) and run["executor"] == "ray"


def test_parts_are_coalesced_and_a_table_folder_holds_only_its_committed_files(folder_run, ray_session, demo_dataset,
                                                                               workdir):
    run, out = folder_run["run"], folder_run["out"]
    compact = run["stages"]["compact"]["state"]["tables"]
    assert compact["images"]["files_before"] > 5 and compact["images"]["files_after"] == 1
    for table in ("images", "channels"):
        listed = run["tables"][table]["files"]
        assert len(listed) == 1
        assert sorted(p.name for p in (out / table).iterdir()) == listed  # the coalesced-away parts are gone
    # the write tasks' parts were lz4 (rewritten anyway); every committed file is zstd
    codecs = {pq.read_metadata(out / table / name).row_group(0).column(0).compression
              for table, facts in run["tables"].items() for name in facts["files"]}
    assert codecs == {"ZSTD"}, codecs
    # the same tables as a run that keeps the scan's parts
    kept = audit(demo_dataset["images"], workdir / "kept", "io.rows_per_block=16", "io.part_target_mb=0")
    assert "compact" not in kept["stages"] and len(kept["tables"]["images"]["files"]) == compact["images"]["files_before"]
    for table in ("images", "channels", "lint", "duplicates"):
        query = f"SELECT * FROM {table}"
        ours = sorted(map(repr, run_query(str(out), query).to_pylist()))
        theirs = sorted(map(repr, run_query(str(workdir / "kept"), query).to_pylist()))
        assert ours == theirs, table


def test_a_small_run_without_ray_gives_the_ray_runs_tables(folder_run, demo_dataset, workdir):
    """The CLI in a fresh process: the demo has fewer objects than ``ray.local_max_rows``, no model,
    so it runs without Ray (ood_ray.run.local) -- the same tables as the Ray run of ``folder_run``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "ood_ray.cli", "audit", str(demo_dataset["images"]), "--out",
                           str(workdir / "local"), "--set", "io.rows_per_block=16"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    local = read_run(str(workdir / "local"))
    assert local["executor"] == "local" and folder_run["run"]["executor"] == "ray"
    assert "decode: " in done.stderr and "/s, eta" in done.stderr  # its progress line
    assert local["status_counts"] == folder_run["run"]["status_counts"]
    for table in ("images", "channels", "lint", "duplicates", "duplicate_pairs"):
        if table not in folder_run["run"]["tables"]:
            continue
        query = f"SELECT * FROM {table}"
        ours = sorted(map(repr, run_query(str(workdir / "local"), query).to_pylist()))
        theirs = sorted(map(repr, run_query(str(folder_run["out"]), query).to_pylist()))
        assert ours == theirs, table


def test_progress_is_counted_on_the_driver_and_the_run_starts_no_actor(ray_session, demo_dataset, tmp_path, caplog):
    """The scan's progress lines come from the write records the driver absorbs as the tasks
    complete: they rise a block at a time to every row. A run without models starts no actor of its
    own (a progress actor that workers reported to was a new worker process, ~0.9 s of CPU at the
    start of the scan); only Ray Data's own helper actors may appear. (kNN and finalize:
    test_audit_models.)"""
    import logging
    import shutil

    import ray

    def actors() -> dict[str, str]:
        return {actor_id: a["ActorClassName"] for actor_id, a in ray.state.actors().items()}

    source = tmp_path / "images"
    source.mkdir()
    for i, path in enumerate(sorted(demo_dataset["images"].rglob("*.png"))[:24]):
        shutil.copy(path, source / f"{i:02d}.png")
    before = actors()
    with caplog.at_level(logging.INFO, logger="ood_ray.progress"):
        run = audit(source, tmp_path / "run", "io.rows_per_block=8", "ray.progress_interval_s=0.05")
    assert run["rows_out"] == run["objects_in"] == 24
    lines = [record.getMessage() for record in caplog.records if record.name == "ood_ray.progress"]
    assert lines and lines[-1].startswith("decode: 24/24 (100.0%)"), lines
    counts = [int(line.split(": ", 1)[1].split("/", 1)[0]) for line in lines]
    assert counts == sorted(counts) and set(counts) <= {0, 8, 16, 24}, counts  # a block of 8 rows at a time
    new = {name for actor_id, name in actors().items() if actor_id not in before}
    assert new <= {"_StatsActor", "_AutoscalingCoordinatorActor"}, new