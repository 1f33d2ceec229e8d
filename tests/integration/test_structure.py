"""Clusters, 2-D maps, drift, new-class detection and the autoencoder score, end to end on the
session's Ray: three colour classes in the reference split, the same classes plus a new one
(checkerboards) in the test split."""

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
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
SETTINGS = ["knn.k=5", "io.rows_per_block=16", "cluster.k_max=8", "autoencoder.enabled=true", "autoencoder.epochs=40",
            "autoencoder.batch_size=32", "autoencoder.image_size=16", "drift.mmd_permutations=100",
            "project.methods=[pca,umap,tsne]", "project.tsne_sample=100"]


def colour_image(rng, colour):
    base = np.array(colour, np.float64) + rng.normal(0, 12, 3)
    pixels = base + rng.normal(0, 6, (32, 32, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def checkerboard(rng):
    cell = int(rng.integers(2, 5))
    yy, xx = np.mgrid[:32, :32]
    board = (((yy // cell) + (xx // cell)) % 2).astype(np.float64)
    pixels = board[..., None] * rng.uniform(180, 255, 3) + rng.normal(0, 6, (32, 32, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def structure_data(tmp_path_factory):
    sys.path.insert(0, str(MODELS_DIR))
    folder = tmp_path_factory.mktemp("structure")
    rng = np.random.default_rng(11)
    rows = []
    for split, per_class in (("train", 30), ("test", 10)):
        for label, colour in COLOURS.items():
            for i in range(per_class):
                path = folder / f"{split}_{label}_{i}.png"
                Image.fromarray(colour_image(rng, colour)).save(path)
                rows.append({"uri": str(path), "split": split, "label": label})
    for i in range(15):
        path = folder / f"test_board_{i}.png"
        Image.fromarray(checkerboard(rng)).save(path)
        rows.append({"uri": str(path), "split": "test", "label": "board"})
    manifests = {}
    for name, keep in (("all", lambda r: True), ("test", lambda r: r["split"] == "test")):
        manifests[name] = folder / f"{name}.csv"
        with open(manifests[name], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["uri", "split", "label"])
            writer.writeheader()
            writer.writerows([r for r in rows if keep(r)])
    return manifests


@pytest.fixture(scope="module")
def structure_run(ray_session, structure_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "structure"
    run = run_audit(load_config(None, [EMBEDDER, *SETTINGS], source=str(structure_data["all"]), out=str(out)))
    return {"out": str(out), "run": run}


def q(run, sql):
    return run_query(run["out"], sql).to_pylist()


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_every_image_has_a_cluster_and_map_coordinates(structure_run):
    rows = q(structure_run, "SELECT cluster, cluster_distance, score_cluster, is_cluster_outlier, x_pca, y_pca FROM images")
    assert len(rows) == 135
    assert all(r[c] is not None for r in rows for c in ("cluster", "cluster_distance", "score_cluster", "x_pca", "y_pca"))
    assert all(r["is_cluster_outlier"] == (r["score_cluster"] > 2.5) for r in rows)


def test_umap_places_every_image_and_tsne_only_its_sample(structure_run):
    rows = q(structure_run, "SELECT x_umap, y_umap, x_tsne, y_tsne FROM images")
    assert all(r["x_umap"] is not None and r["y_umap"] is not None for r in rows)
    assert sum(r["x_tsne"] is not None for r in rows) == 100
    assert all((r["x_tsne"] is None) == (r["y_tsne"] is None) for r in rows)
    # the UMAP map keeps the new class apart: its images' nearest map neighbours are checkerboards
    labelled = q(structure_run, "SELECT label, x_umap, y_umap FROM images")
    xy = np.asarray([[r["x_umap"], r["y_umap"]] for r in labelled])
    labels = np.asarray([r["label"] for r in labelled])
    boards = np.flatnonzero(labels == "board")
    d = np.linalg.norm(xy[boards][:, None] - xy[None], axis=2)
    d[np.arange(len(boards)), boards] = np.inf
    assert (labels[np.argmin(d, axis=1)] == "board").mean() > 0.9


def test_clusters_follow_the_classes_and_the_new_class_is_its_own_cluster(structure_run):
    by_label = q(structure_run, "SELECT label, list(DISTINCT cluster) AS clusters FROM images GROUP BY label")
    clusters = {r["label"]: r["clusters"] for r in by_label}
    assert all(len(c) == 1 for c in clusters.values()), clusters
    assert len({c[0] for c in clusters.values()}) == 4, clusters
    run = read_run(structure_run["out"])
    assert run["structure"]["clusters"]["k"] == 4
    silhouette = run["structure"]["clusters"]["silhouette"]
    assert max(silhouette, key=silhouette.get) == "4"


def test_clusters_table_reconciles_with_images(structure_run):
    table = q(structure_run, "SELECT * FROM clusters ORDER BY cluster")
    assert sum(r["size"] for r in table) == 135
    for r in table:
        members = q(structure_run, f"SELECT label, split, cluster_distance FROM images WHERE cluster = {r['cluster']}")
        assert r["size"] == len(members)
        assert r["mean_distance"] == pytest.approx(np.mean([m["cluster_distance"] for m in members]), rel=1e-5)
        assert dict(r["labels"]) == {m["label"]: sum(x["label"] == m["label"] for x in members) for m in members}
        assert r["purity"] == pytest.approx(1.0)
        assert 0.9 < r["centroid_norm"] <= 1.0 + 1e-6


def test_cluster_distance_is_the_distance_to_the_normalised_member_mean(structure_run):
    rows = q(structure_run, """SELECT i.cluster, i.cluster_distance, e.embedding FROM images i JOIN embeddings e USING (image_id)""")
    X = unit(np.asarray([r["embedding"] for r in rows], np.float64))
    labels = np.asarray([r["cluster"] for r in rows])
    for c in set(labels.tolist()):
        centroid = X[labels == c].mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        expected = np.linalg.norm(X[labels == c] - centroid, axis=1)
        got = np.asarray([r["cluster_distance"] for r in rows])[labels == c]
        # k-means converged on separated classes: the centroid is the normalised member mean
        assert np.allclose(got, expected, atol=2e-3)


def test_pca_coordinates_equal_scikit_learn_on_the_sample(structure_run):
    from sklearn.decomposition import PCA

    rows = q(structure_run, "SELECT i.x_pca, i.y_pca, e.embedding FROM images i JOIN embeddings e USING (image_id)")
    X = unit(np.asarray([r["embedding"] for r in rows], np.float64))
    expected = PCA(n_components=2).fit_transform(X)
    got = np.asarray([[r["x_pca"], r["y_pca"]] for r in rows])
    assert np.allclose(got, expected, atol=1e-4)


def test_drift_table_finds_the_new_class(structure_run):
    drift = q(structure_run, "SELECT * FROM drift WHERE split = 'test'")
    stats = [r for r in drift if r["test"] in ("ks", "cvm")]
    assert len({r["feature"] for r in stats}) >= 10
    # one FDR threshold for the statistics' family, between alpha/m and alpha
    thresholds = {r["threshold"] for r in stats}
    assert len(thresholds) == 1 and 0.05 / len(stats) <= thresholds.pop() <= 0.05
    assert all(r["drifted"] == (r["p_value"] <= r["threshold"]) for r in stats)
    assert any(r["drifted"] for r in stats if r["feature"] in ("sharpness", "contrast", "entropy"))
    mmd = [r for r in drift if r["test"] == "mmd"]
    assert len(mmd) == 1 and mmd[0]["drifted"] and mmd[0]["p_value"] < 0.05
    shift = [r for r in drift if r["test"] == "knn_shift"]
    assert len(shift) == 1 and shift[0]["drifted"] and shift[0]["statistic"] > 0.6
    shift = [r for r in drift if r["test"] == "label_shift"]
    assert len(shift) == 1 and shift[0]["drifted"] and shift[0]["n_reference"] == 90 and shift[0]["n_new"] == 45
    assert json.loads(shift[0]["detail"])["share_reference_new"]["board"] == [0.0, pytest.approx(15 / 45, abs=1e-4)]
    new_classes = [r for r in drift if r["test"] == "new_classes"]
    detail = json.loads(new_classes[0]["detail"])
    assert detail["k_reference"] == 3 and detail["k_combined"] == 4 and new_classes[0]["drifted"]
    new_clusters = [r for r in drift if r["test"] == "new_cluster"]
    assert len(new_clusters) == 1 and new_clusters[0]["n_new"] == 15 and new_clusters[0]["n_reference"] == 0


def test_autoencoder_score_recomputed_and_separates_the_new_class(structure_run):
    import torch  # noqa: F401 - the model loads with torch

    from ood_ray.autoencoder.model import load_autoencoder, reconstruction_error
    from ood_ray.embed.preprocess import prepare_model_input
    from ood_ray.io.decode import decode_image

    run = read_run(structure_run["out"])
    saved = run["ood"]["autoencoder"]
    assert saved["train_images"] > 0 and saved["epochs"] == 40
    losses = saved["loss_per_epoch"]  # one loss per epoch, reported once at the end; training lowers it
    assert len(losses) == 40 and losses[-1] == pytest.approx(saved["final_loss"], rel=1e-4) and losses[-1] < losses[0] / 2
    weights = (Path(structure_run["out"]) / saved["file"]).read_bytes()
    model = load_autoencoder(weights, 16)
    rows = q(structure_run, "SELECT uri, label, score_recon, is_ood_recon FROM images ORDER BY uri")
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    for r in rows[:5] + rows[-5:]:
        decoded = decode_image(Path(r["uri"]).read_bytes(), 10**8)
        pixels = np.frombuffer(prepare_model_input(decoded.pixels, config), np.uint8).reshape(1, 16, 16, 3)
        assert r["score_recon"] == pytest.approx(float(reconstruction_error(model, pixels)[0]), rel=1e-4)
    threshold = run["ood"]["thresholds"]["score_recon"]["threshold"]
    assert all(r["is_ood_recon"] == (r["score_recon"] > threshold) for r in rows)
    boards = np.median([r["score_recon"] for r in rows if r["label"] == "board"])
    colours = np.median([r["score_recon"] for r in rows if r["label"] != "board"])
    assert boards > 5 * colours


def test_new_data_against_a_saved_reference(structure_run, structure_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "against"
    run = run_audit(load_config(None, ["knn.k=5", "autoencoder.enabled=true", "autoencoder.image_size=16", "cluster.k_max=8",
                                       "drift.mmd_permutations=100"],
                                source=str(structure_data["test"]), out=str(out), reference=structure_run["out"]))
    assert "against run" in run["drift"]["compared"]
    rows = run_query(str(out), "SELECT test, drifted, detail FROM drift").to_pylist()
    assert {"ks", "cvm", "mmd", "knn_shift", "new_classes"} <= {r["test"] for r in rows}
    assert [r["drifted"] for r in rows if r["test"] == "mmd"] == [True]
    # the reference run's autoencoder and threshold score the new data
    reference = read_run(structure_run["out"])
    assert run["ood"]["autoencoder"]["file"] == reference["ood"]["autoencoder"]["file"]
    same = run_query(str(out), "SELECT uri, score_recon, cluster, x_pca, y_pca FROM images ORDER BY uri").to_pylist()
    before = {r["uri"]: r for r in q(structure_run, "SELECT uri, score_recon, cluster, x_pca, y_pca FROM images")}
    assert all(r["score_recon"] == pytest.approx(before[r["uri"]]["score_recon"], rel=1e-5) for r in same)
    # the reference run's clusters and PCA axes: the same image lands in the same cluster and place
    assert run["structure"]["from"].startswith("reference run")
    assert all(r["cluster"] == before[r["uri"]]["cluster"] for r in same)
    assert all(r["x_pca"] == pytest.approx(before[r["uri"]]["x_pca"], abs=1e-5) for r in same)


def test_readme_structure_queries_run(structure_run):
    """Every SQL block of the README's structure section runs on a real run and returns rows."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Dataset structure", 1)[1].split("\n## ", 1)[0]
    statements = [s.strip() for block in re.findall(r"```sql\n(.*?)```", section, re.DOTALL) for s in block.split(";") if s.strip()]
    assert len(statements) >= 7
    for statement in statements:
        sql = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        rows = run_query(structure_run["out"], sql)
        assert rows.num_rows > 0, sql
