"""`ood-ray evaluate` on a committed run, and the holdout-class protocol's manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ood_ray.cli import main as cli_main
from ood_ray.config import ConfigError
from ood_ray.evaluate import evaluate
from ood_ray.holdout import HOLDOUT, HOLDOUT_REFERENCE, choose_classes, holdout_manifest
from ood_ray.run.layout import RunLayout, read_run
from ood_ray.metrics import compute_metrics
from ood_ray.query import run_query


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    splits = ["train"] * 100 + ["test"] * 60 + ["far"] * 30 + ["near"] * 30
    score = np.r_[rng.normal(0, 1, 160), rng.normal(4, 1, 30), rng.normal(1, 1, 30)]
    table = pa.table({
        "image_id": [f"id{i:04d}" for i in range(220)], "uri": [f"/d/{i}.png" for i in range(220)], "split": splits,
        "label": ["a", "b"] * 110, "status": ["ok"] * 219 + ["truncated"],
        "is_novel": [s in ("far", "near") for s in splits],
        "score_good": score, "score_bad": -score,
    })
    run = RunLayout(str(tmp_path))
    uri = run.write_part("images", "00000", table)
    run.commit({"images": [(uri, 220)]}, {"stages": {"scan": {"state": {"reference_split": "train"}}}})
    return tmp_path, table


def test_one_row_per_score_and_set_plus_the_mean(run_dir):
    out, table = run_dir
    result = evaluate(str(out), ood_splits=["far", "near"]).to_pylist()
    rows = {(r["score"], r["ood_set"]): r for r in result}
    assert set(rows) == {(s, o) for s in ("score_good", "score_bad") for o in ("far", "near", "mean")}
    score = table.column("score_good").to_numpy()
    split = np.asarray(table.column("split").to_pylist())
    ok = np.arange(220) < 219
    expected = compute_metrics(score[(split == "test") & ok], score[(split == "far") & ok])
    assert rows[("score_good", "far")]["auroc"] == pytest.approx(expected.auroc)
    assert rows[("score_good", "far")]["n_id"] == 60 and rows[("score_good", "near")]["n_ood"] == 29  # truncated row out
    mean = rows[("score_good", "mean")]
    assert mean["auroc"] == pytest.approx((rows[("score_good", "far")]["auroc"] + rows[("score_good", "near")]["auroc"]) / 2)
    assert rows[("score_good", "far")]["auroc"] > 0.95 and rows[("score_bad", "far")]["auroc"] < 0.05
    # stored in the run and queryable
    assert read_run(str(out))["tables"]["evaluation"]["rows"] == 6
    assert run_query(str(out), "SELECT count(*) FROM evaluation").column(0)[0].as_py() == 6
    evaluate(str(out), ood_splits=["far"])  # replacing it leaves one set of files
    assert run_query(str(out), "SELECT count(*) FROM evaluation").column(0)[0].as_py() == 2


def test_truth_from_a_column_or_labels(run_dir, capsys):
    out, _ = run_dir
    by_column = evaluate(str(out), ood_column="is_novel", scores=["score_good"]).to_pylist()
    assert [(r["ood_set"], r["n_id"], r["n_ood"]) for r in by_column] == [("is_novel", 60, 59)]
    by_label = evaluate(str(out), ood_labels=["b"], id_splits=["test"], scores=["score_good"]).to_pylist()
    assert by_label[0]["n_id"] == 30 and by_label[0]["ood_set"] == "labels:b"
    assert cli_main(["evaluate", str(out), "--ood-split", "far", "--format", "csv"]) == 0
    assert "fpr_at_95tpr_id_positive" in capsys.readouterr().out


def test_evaluate_errors_are_clear(run_dir):
    out, _ = run_dir
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate(str(out))
    with pytest.raises(ConfigError, match="not a column"):
        evaluate(str(out), ood_column="nope")
    with pytest.raises(ConfigError, match="need in-distribution and OOD"):
        evaluate(str(out), ood_splits=["missing_split"])
    with pytest.raises(ConfigError, match="not in the run"):
        evaluate(str(out), ood_splits=["far"], scores=["score_nope"])


def test_holdout_classes_are_reproducible_under_a_seed():
    labels = [f"c{i}" for i in range(10)] * 3
    first = choose_classes(labels, None, 4, seed=7)
    assert first == choose_classes(labels, None, 4, seed=7) and len(first) == 4
    assert len({tuple(choose_classes(labels, None, 4, seed=s)) for s in range(10)}) > 1
    assert choose_classes(labels, ["c3", "c1"], None, 0) == ["c1", "c3"]
    with pytest.raises(ConfigError, match="not labels"):
        choose_classes(labels, ["zebra"], None, 0)
    with pytest.raises(ConfigError, match="holdout-count"):
        choose_classes(labels, None, 10, 0)


def test_held_out_classes_never_reach_the_reference():
    manifest = pa.table({"uri": [f"u{i}" for i in range(12)], "label": ["a", "b", "c"] * 4,
                         "split": ["train"] * 6 + ["test"] * 6})
    moved = holdout_manifest(manifest, ["b"], "train").to_pylist()
    for row in moved:
        if row["label"] == "b":
            assert row["split"] in (HOLDOUT, HOLDOUT_REFERENCE)
        else:
            assert row["split"] in ("train", "test")
    assert {r["split"] for r in moved if r["label"] == "b"} == {HOLDOUT, HOLDOUT_REFERENCE}
    assert not [r for r in moved if r["split"] == "train" and r["label"] == "b"]
