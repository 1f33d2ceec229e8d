"""The kNN stage end to end on the session's Ray: scores recomputed, OOD separation, neighbours,
embedding near-duplicates, the saved index and scoring new data against it."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_ray.config import load_config
from ood_ray.run.layout import read_run
from ood_ray.pipeline import run_audit
from ood_ray.query import run_query

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
EMBEDDER = "models=[{name: 'custom_models:channel_stats_embedder', alias: stats}]"
KNN = ["knn.k=5", "knn.shards=3", "knn.neighbors_stored=4", "knn.duplicate_similarity=0.9999", "knn.query_rows=16",
       "io.rows_per_block=12"]


@pytest.fixture(scope="module")
def manifests(demo_dataset, tmp_path_factory):
    """The demo images plus 8 pixel-noise images (split test, label ood) as three manifests."""
    sys.path.insert(0, str(MODELS_DIR))
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(5)
    noise = []
    for i in range(8):
        path = folder / f"noise_{i}.png"
        Image.fromarray(rng.integers(0, 256, (48 + i, 52, 3), dtype=np.uint8)).save(path)
        noise.append({"uri": str(path), "split": "test", "label": "ood", "photographer": "none"})
    with open(demo_dataset["manifest"], newline="") as f:
        rows = [dict(r, uri=str(demo_dataset["root"] / r["uri"])) for r in csv.DictReader(f)]
    rows += noise
    out = {}
    for name, keep in (("all", lambda r: True), ("train", lambda r: r["split"] == "train"), ("test", lambda r: r["split"] == "test")):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["uri", "split", "label", "photographer"])
            writer.writeheader()
            writer.writerows([r for r in rows if keep(r)])
        out[name] = path
    return out


@pytest.fixture(scope="module")
def knn_run(ray_session, manifests, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "knn"
    run = run_audit(load_config(None, [EMBEDDER, *KNN], source=str(manifests["all"]), out=str(out)))
    return {"out": str(out), "run": run}


def q(run, sql):
    return run_query(run["out"], sql)


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_score_knn_recomputed_from_stored_embeddings_with_leave_one_out(knn_run):
    rows = q(knn_run, """SELECT i.image_id, i.split, e.embedding, i.score_knn_stats, i.score_knn_mean_stats
                         FROM images i JOIN embeddings e USING (image_id) ORDER BY i.image_id""").to_pylist()
    X = unit(np.asarray([r["embedding"] for r in rows], dtype=np.float64))
    reference = np.asarray([r["split"] == "train" for r in rows])
    s = X @ X[reference].T
    ref_index = np.flatnonzero(reference)
    for i, r in enumerate(rows):
        sims = s[i].copy()
        if reference[i]:
            sims[np.flatnonzero(ref_index == i)] = -np.inf  # never its own neighbour
        top = np.sort(sims)[::-1][:5]
        assert r["score_knn_stats"] == pytest.approx(np.sqrt(2 - 2 * top[4]), abs=2e-4)
        assert r["score_knn_mean_stats"] == pytest.approx(np.mean(1 - top), abs=2e-5)
    assert read_run(knn_run["out"])["knn"]["stats"]["shard_sizes"][0]["reference"] >= 0
    assert sum(size["reference"] for size in read_run(knn_run["out"])["knn"]["stats"]["shard_sizes"]) == reference.sum()


def test_planted_ood_images_score_above_in_distribution(knn_run):
    rows = q(knn_run, "SELECT label, split, score_knn_stats AS s, is_ood_knn_stats AS f FROM images WHERE status = 'ok'").to_pylist()
    ood = [r["s"] for r in rows if r["label"] == "ood"]
    test_id = [r["s"] for r in rows if r["split"] == "test" and r["label"] != "ood"]
    assert len(ood) == 8
    assert np.min(ood) > np.median(test_id)
    assert np.mean([r["f"] for r in rows if r["label"] == "ood"]) >= 0.75
    threshold = read_run(knn_run["out"])["ood"]["thresholds"]["score_knn_stats"]["threshold"]
    train = [r["s"] for r in rows if r["split"] == "train"]
    assert threshold == pytest.approx(np.quantile(train, 0.95), rel=1e-5)


def test_neighbors_table(knn_run):
    rows = q(knn_run, """SELECT n.image_id, n.rank, n.neighbor_id, n.distance, n.cosine_similarity, i.split, r.split AS neighbor_split
                         FROM neighbors n JOIN images i USING (image_id) JOIN images r ON r.image_id = n.neighbor_id""").to_pylist()
    assert rows and all(r["neighbor_id"] != r["image_id"] for r in rows)
    assert {r["neighbor_split"] for r in rows} == {"train"}  # neighbours come from the reference
    assert {r["rank"] for r in rows} == {1, 2, 3, 4}
    for r in rows:
        assert r["distance"] == pytest.approx(np.sqrt(max(0.0, 2 - 2 * r["cosine_similarity"])), abs=1e-5)


def test_embedding_near_duplicates_find_the_planted_copies(knn_run, demo_dataset):
    pairs = q(knn_run, """SELECT a.uri AS a, b.uri AS b, p.cosine_similarity, p.distance FROM duplicate_pairs p
                          JOIN images a ON a.image_id = p.image_id JOIN images b ON b.image_id = p.other_id
                          WHERE p.method = 'embedding'""").to_pylist()
    found = {frozenset((Path(r["a"]).name, Path(r["b"]).name)) for r in pairs}
    for group in demo_dataset["planted"]["exact"]:
        assert frozenset(Path(p).name for p in group) in found, group
    assert all(r["cosine_similarity"] >= 0.9999 for r in pairs)
    assert all(r["distance"] == pytest.approx(1 - r["cosine_similarity"], abs=1e-6) for r in pairs)
    # the hash groups' pairs sit beside them, each within the near distance of its method
    hashed = q(knn_run, "SELECT method, distance, cosine_similarity FROM duplicate_pairs WHERE method <> 'embedding'").to_pylist()
    assert hashed and all(r["method"] in ("phash", "dhash", "phash_d4", "phash_crop") and r["distance"] <= 4 for r in hashed)
    assert all(r["cosine_similarity"] is None for r in hashed)
    groups = q(knn_run, "SELECT group_id, count(*) AS n FROM duplicates WHERE method = 'embedding' GROUP BY 1").to_pylist()
    assert groups and all(g["n"] >= 2 for g in groups)
    leak = q(knn_run, "SELECT DISTINCT method FROM leakage").column(0).to_pylist()
    assert "embedding" in leak  # the byte copy across splits is also an embedding duplicate


def test_the_index_is_saved_with_the_run(knn_run):
    run = read_run(knn_run["out"])
    saved = run["knn"]["stats"]
    assert saved["k"] == 5 and saved["plan"]["kind"] == "flat" and len(saved["files"]) == 3
    for entry in saved["files"]:
        assert entry["index"] in run["artifacts"] and (Path(knn_run["out"]) / entry["index"]).exists()


def test_scoring_new_data_against_a_saved_reference_equals_auditing_both(knn_run, manifests, tmp_path):
    reference = run_audit(load_config(None, [EMBEDDER, *KNN], source=str(manifests["train"]), out=str(tmp_path / "ref")))
    new = run_audit(load_config(None, ["knn.query_rows=7"], source=str(manifests["test"]), out=str(tmp_path / "new"),
                                reference=str(tmp_path / "ref")))
    assert new["ood"]["reference"].startswith(f"run {reference['run_id']}")
    assert new["knn"]["stats"]["reference_run"] == reference["run_id"]
    columns = ("image_id, score_knn_stats, score_knn_mean_stats, is_ood_knn_stats, is_ood_knn_mean_stats, "
               "score_mahalanobis_stats, score_rmd_stats, is_ood_rmd_stats")
    together = run_query(knn_run["out"], f"SELECT {columns} FROM images WHERE split = 'test' AND status = 'ok' ORDER BY 1").to_pylist()
    apart = run_query(str(tmp_path / "new"), f"SELECT {columns} FROM images WHERE status = 'ok' ORDER BY 1").to_pylist()
    assert [r["image_id"] for r in apart] == [r["image_id"] for r in together]
    for a, b in zip(apart, together):
        assert a["score_knn_stats"] == pytest.approx(b["score_knn_stats"], abs=1e-5)
        assert a["score_knn_mean_stats"] == pytest.approx(b["score_knn_mean_stats"], abs=1e-6)
        assert (a["is_ood_knn_stats"], a["is_ood_knn_mean_stats"]) == (b["is_ood_knn_stats"], b["is_ood_knn_mean_stats"])
        # the fitted detectors travel with the reference: the same sample, the same fit
        assert a["score_mahalanobis_stats"] == pytest.approx(b["score_mahalanobis_stats"], rel=1e-5)
        assert a["score_rmd_stats"] == pytest.approx(b["score_rmd_stats"], rel=1e-4, abs=1e-4)
        assert a["is_ood_rmd_stats"] == b["is_ood_rmd_stats"]
    thresholds = json.loads((tmp_path / "new" / "run.json").read_text())["ood"]["thresholds"]
    assert thresholds["score_knn_stats"]["threshold"] == reference["ood"]["thresholds"]["score_knn_stats"]["threshold"]


def test_holdout_protocol_end_to_end(ray_session, manifests, tmp_path):
    from ood_ray.holdout import run_holdout

    config = load_config(None, [EMBEDDER, *KNN], source=str(manifests["all"]), out=str(tmp_path / "holdout"))
    run = run_holdout(config, ["stripes"], None, seed=0)
    assert run["holdout"]["classes"] == ["stripes"]
    out = str(tmp_path / "holdout")
    leaked = run_query(out, "SELECT count(*) FROM images WHERE split = 'train' AND label = 'stripes'").column(0)[0].as_py()
    assert leaked == 0
    expected_reference = run_query(out, "SELECT count(*) FROM images WHERE split = 'train' AND status = 'ok'").column(0)[0].as_py()
    assert run["knn"]["stats"]["n_reference"] == expected_reference
    rows = run_query(out, "SELECT score, ood_set, n_id, n_ood, auroc FROM evaluation").to_pylist()
    assert {r["ood_set"] for r in rows} == {"holdout"}
    assert {"score_knn_stats", "score_mahalanobis_stats", "score_rmd_stats", "score_clf_entropy_stats"} <= {r["score"] for r in rows}
    n_ood = run_query(out, "SELECT count(*) FROM images WHERE split = 'holdout' AND status = 'ok'").column(0)[0].as_py()
    assert all(r["n_ood"] == n_ood and 0.0 <= r["auroc"] <= 1.0 for r in rows)
