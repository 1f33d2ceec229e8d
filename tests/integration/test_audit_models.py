"""Models in the audit on the session's local Ray: embeddings, predictions, every score recomputed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_ray.config import ConfigError, ModelConfig, load_config
from ood_ray.embed.models import build_model, embed_and_logits, inspect_models
from ood_ray.embed.preprocess import normalize_batch, prepare_model_input
from ood_ray.io.decode import decode_image
from ood_ray.run.layout import read_run
from ood_ray.pipeline import run_audit
from ood_ray.query import run_query

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def custom_checkpoint(tmp_path_factory):
    """Weights for the custom import-path model, changed from its seeded initialisation."""
    import sys

    sys.path.insert(0, str(MODELS_DIR))
    model = build_model(ModelConfig(name="custom_models:tiny_classifier"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def model_run(ray_session, demo_dataset, custom_checkpoint, tmp_path_factory):
    import sys

    sys.path.insert(0, str(MODELS_DIR))
    out = tmp_path_factory.mktemp("runs") / "models"
    models = (
        "models=[{name: test_resnet, alias: twin_a}, {name: test_resnet, alias: twin_b},"
        " {name: test_vit, num_classes: 0, alias: vit},"
        f" {{name: 'custom_models:tiny_classifier', checkpoint: '{custom_checkpoint}',"
        " class_names: [circles, squares, stripes]}]"
    )
    config = load_config(None, [models, "embed.batch_size=16", "io.rows_per_block=20", "embed.num_cpus_per_actor=1"],
                         source=str(demo_dataset["images"]), out=str(out))
    progress, logger = ProgressLines(), logging.getLogger("ood_ray.progress")
    level = logger.level
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        run = run_audit(config)
    finally:
        logger.removeHandler(progress)
        logger.setLevel(level)
    return {"out": str(out), "run": run, "config": config, "progress": progress.lines}


class ProgressLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def q(run, sql):
    return run_query(run["out"], sql)


def test_each_distributed_stage_logs_its_progress_to_the_last_row(model_run):
    """Scan (decode and embedding), kNN and finalize count their rows on the driver from the records
    of the parts written; each stage's last line has every object."""
    n = model_run["run"]["objects_in"]
    for step in ("decode", "knn", "finalize"):
        assert any(line.startswith(f"{step}: {n:,}/{n:,} (100.0%)") for line in model_run["progress"]), (step, model_run["progress"])


def test_counts_and_tables(model_run):
    run = model_run["run"]
    ok = run["status_counts"]["ok"]
    assert run["rows_out"] == run["objects_in"]
    counts = {r["model"]: r["n"] for r in q(model_run, "SELECT model, count(*) AS n FROM embeddings GROUP BY 1").to_pylist()}
    assert counts == {"twin_a": ok, "twin_b": ok, "vit": ok, "tiny_classifier": ok}
    dims = {r["model"]: r["dim"] for r in q(model_run, "SELECT DISTINCT model, dim FROM embeddings").to_pylist()}
    assert dims == {"twin_a": 96, "twin_b": 96, "vit": 64, "tiny_classifier": 8}
    predicted = {r["model"] for r in q(model_run, "SELECT DISTINCT model FROM predictions").to_pylist()}
    assert predicted == {"twin_a", "twin_b", "tiny_classifier"}  # the headless vit predicts nothing
    failed = q(model_run, """SELECT count(*) FROM images i JOIN embeddings e USING (image_id) WHERE i.status <> 'ok'""")
    assert failed.column(0)[0].as_py() == 0
    assert not any(c.startswith("_") for c in q(model_run, "SELECT * FROM images LIMIT 1").column_names)
    # the embedding actors' time in batches and waiting for them: both measured, the share in (0, 1]
    scan = run["stages"]["scan"]["state"]
    assert scan["worker_seconds"]["embed"] > 0 and scan["worker_seconds"]["embed_idle"] >= 0
    assert 0 < scan["embed_actor_busy_share"] <= 1
    busy, idle = scan["worker_seconds"]["embed"], scan["worker_seconds"]["embed_idle"]
    assert abs(scan["embed_actor_busy_share"] - busy / (busy + idle)) < 0.01  # worker_seconds are rounded


def test_predictions_are_consistent_probabilities(model_run):
    from scipy.special import softmax

    rows = q(model_run, "SELECT model, probabilities, logits, top_classes, top_probabilities FROM predictions").to_pylist()
    for r in rows:
        p = np.asarray(r["probabilities"])
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(softmax(np.asarray(r["logits"], dtype=np.float64)), p, atol=1e-6)
        top = np.argsort(-p, kind="stable")[: len(r["top_classes"])]
        assert list(top) == r["top_classes"]
        np.testing.assert_allclose(r["top_probabilities"], p[top], rtol=1e-6)


def _probabilities(model_run, alias):
    rows = q(model_run, f"SELECT image_id, probabilities FROM predictions WHERE model = '{alias}' ORDER BY image_id").to_pylist()
    return [r["image_id"] for r in rows], np.asarray([r["probabilities"] for r in rows], dtype=np.float64)


def _scores(model_run, ids, column):
    rows = q(model_run, f"SELECT image_id, {column} FROM images WHERE status = 'ok' ORDER BY image_id").to_pylist()
    by_id = {r["image_id"]: r[column] for r in rows}
    return np.asarray([by_id[i] for i in ids], dtype=np.float64)


def test_probability_scores_recomputed_from_stored_predictions(model_run):
    from scipy.special import softmax

    for alias in ("twin_a", "tiny_classifier"):
        ids, p = _probabilities(model_run, alias)
        classes = p.shape[1]
        np.testing.assert_allclose(_scores(model_run, ids, f"score_msp_{alias}"), 1 - p.max(axis=1), atol=2e-6)
        entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1) / np.log(classes)
        np.testing.assert_allclose(_scores(model_run, ids, f"score_entropy_{alias}"), entropy, atol=2e-5)
        # GEN (gamma 0.1, M 100) from the stored logits (float32 probabilities lose 1 - p near 1)
        rows = q(model_run, f"SELECT image_id, logits FROM predictions WHERE model = '{alias}' ORDER BY image_id").to_pylist()
        clamped = np.clip(softmax(np.asarray([r["logits"] for r in rows], dtype=np.float64), axis=1), 1e-7, 1 - 1e-7)
        top = -np.sort(-clamped, axis=1)[:, :100]
        gen = (top ** 0.1 * (1 - top) ** 0.1).mean(axis=1)
        np.testing.assert_allclose(_scores(model_run, ids, f"score_gen_{alias}"), gen, rtol=1e-5, atol=1e-6)


def test_ensemble_of_twins_equals_one_member_and_has_no_mutual_information(model_run):
    assert model_run["run"]["ood"]["ensemble_members"] == ["twin_a", "twin_b"]
    ids, pa_ = _probabilities(model_run, "twin_a")
    _, pb = _probabilities(model_run, "twin_b")
    np.testing.assert_allclose(pa_, pb, atol=1e-6)
    mean = (pa_ + pb) / 2
    ensemble = -(mean * np.log(mean)).sum(axis=1) / np.log(mean.shape[1])
    np.testing.assert_allclose(_scores(model_run, ids, "score_ensemble_entropy"), ensemble, atol=2e-5)
    np.testing.assert_allclose(_scores(model_run, ids, "score_ensemble_entropy"), _scores(model_run, ids, "score_entropy_twin_a"), atol=2e-5)
    np.testing.assert_allclose(_scores(model_run, ids, "score_mutual_information"), 0.0, atol=2e-5)


def test_logit_scores_and_embeddings_recomputed_by_running_the_models(model_run, demo_dataset, custom_checkpoint):
    """maxlogit and energy need the logits: rebuild each model here and run it on a few images."""
    from scipy.special import logsumexp

    rows = q(model_run, "SELECT image_id, uri, score_maxlogit_twin_a, score_energy_twin_a, score_maxlogit_tiny_classifier "
                        "FROM images WHERE status = 'ok' ORDER BY image_id LIMIT 6").to_pylist()
    specs = {"twin_a": ModelConfig(name="test_resnet"),
             "tiny_classifier": ModelConfig(name="custom_models:tiny_classifier", checkpoint=str(custom_checkpoint))}
    stored = {r["image_id"]: r for r in q(model_run, "SELECT image_id, embedding FROM embeddings WHERE model = 'tiny_classifier'").to_pylist()}
    for alias, spec in specs.items():
        info = inspect_models([spec])[0]
        model = build_model(spec, info.import_root)
        _, h, w = info.data_config["input_size"]
        batch = np.stack([np.frombuffer(prepare_model_input(decode_image(Path(r["uri"]).read_bytes(), 10**8).pixels,
                                                            info.data_config), np.uint8).reshape(h, w, 3) for r in rows])
        with torch.no_grad():
            embedding, logits = embed_and_logits(model, normalize_batch(torch.from_numpy(batch.copy()), info.data_config["mean"], info.data_config["std"]))
        logits = logits.numpy().astype(np.float64)
        np.testing.assert_allclose([r[f"score_maxlogit_{alias}"] for r in rows], -logits.max(axis=1), rtol=1e-4, atol=1e-4)
        if alias == "twin_a":
            np.testing.assert_allclose([r["score_energy_twin_a"] for r in rows], -logsumexp(logits, axis=1), rtol=1e-4, atol=1e-4)
        else:  # the checkpoint, not the seeded initialisation, produced the stored embeddings
            np.testing.assert_allclose([stored[r["image_id"]]["embedding"] for r in rows], embedding.numpy(), rtol=1e-4, atol=1e-5)


def test_flags_follow_the_recorded_reference_thresholds(model_run):
    run = read_run(model_run["out"])
    thresholds = run["ood"]["thresholds"]
    assert run["ood"]["reference"].startswith("split = 'train'")
    for column in ("score_msp_twin_a", "score_energy_twin_a", "score_ensemble_entropy", "score_clf_entropy_vit"):
        flag = "is_ood_" + column[len("score_"):]
        rows = q(model_run, f"SELECT split, {column} AS s, {flag} AS f FROM images WHERE status = 'ok'").to_pylist()
        t = thresholds[column]["threshold"]
        assert all(r["f"] == (r["s"] > t) for r in rows), column
        if column != "score_clf_entropy_vit":
            reference = [r["s"] for r in rows if r["split"] == "train"]
            assert t == pytest.approx(np.quantile(reference, 0.95), rel=1e-5)
            # At most 5% of the reference (plus one row of interpolation) lies above its 95% quantile.
            assert np.mean([r["f"] for r in rows if r["split"] == "train"]) <= 0.05 + 1 / len(reference)


def test_clf_entropy_for_the_headless_embedder(model_run):
    ood = read_run(model_run["out"])["ood"]
    assert ood["fitted"]["score_clf_entropy_vit"]["classes"] == 3
    saved = ood["detectors"]["score_clf_entropy_vit"]
    assert (saved["detector"], saved["model"]) == ("clf_entropy", "vit")
    state = json.loads((Path(model_run["out"]) / saved["file"]).read_text())
    assert state["name"] == "clf_entropy" and state["c_values"] == [1e-5, 1.0, 1e5]
    # Mahalanobis and RMD are fitted for every model; clf_entropy only for the headless one
    assert {"score_mahalanobis_twin_a", "score_rmd_vit", "score_mahalanobis_tiny_classifier"} <= set(ood["detectors"])
    assert "score_clf_entropy_twin_a" not in ood["detectors"]
    values = q(model_run, "SELECT score_clf_entropy_vit AS s FROM images WHERE status = 'ok'").column("s").to_pylist()
    assert all(0.0 <= v <= 1.0 for v in values)
    assert "score_msp_vit" not in q(model_run, "SELECT * FROM images LIMIT 0").column_names


def test_head_detectors_use_the_classifier_layer_and_score_every_embedding(model_run):
    """ReAct, ASH-S, SCALE, fDBD, ViM, NNGuide for each classifier with a linear head (none for the
    headless embedder); the saved state holds the model's own layer, and applied to the stored
    embeddings it gives the stored scores; Mahalanobis++ / RMD++ beside them."""
    from ood_ray.detectors import HEAD_DETECTORS, REGISTRY

    ood = read_run(model_run["out"])["ood"]
    for name in HEAD_DETECTORS:
        assert f"score_{name}_twin_a" in ood["detectors"] and f"score_{name}_tiny_classifier" in ood["detectors"]
        assert f"score_{name}_vit" not in ood["detectors"]
    assert {"score_mahalanobis_pp_vit", "score_rmd_pp_twin_a"} <= set(ood["detectors"])
    fc = build_model(ModelConfig(name="test_resnet")).get_classifier()
    rows = q(model_run, "SELECT e.image_id, e.embedding, " + ", ".join(f"i.score_{n}_twin_a AS {n}" for n in HEAD_DETECTORS)
             + " FROM embeddings e JOIN images i USING (image_id) WHERE e.model = 'twin_a' ORDER BY e.image_id").to_pylist()
    embeddings = np.asarray([r["embedding"] for r in rows], dtype=np.float64)
    for name in HEAD_DETECTORS:
        saved = ood["detectors"][f"score_{name}_twin_a"]
        detector = REGISTRY[name].from_state_dict(json.loads((Path(model_run["out"]) / saved["file"]).read_text()))
        np.testing.assert_allclose(detector.weight_, fc.weight.detach().double().numpy(), rtol=1e-7)
        np.testing.assert_allclose(detector.score(embeddings), [r[name] for r in rows], rtol=1e-4, atol=1e-5)
        flags = q(model_run, f"SELECT count(*) FILTER (WHERE is_ood_{name}_twin_a) AS n, count(*) AS m FROM images "
                             f"WHERE status = 'ok' AND split = 'train'").to_pylist()[0]
        assert flags["n"] <= 0.2 * flags["m"], name  # the 95% reference quantile (held-out rows) flags few train rows


def test_fusion_of_two_distances_and_a_residual_score(model_run):
    """score_fusion: the mean of the empirical CDFs of kNN, Mahalanobis++ and ViM of the first
    classifier on held-out reference rows; recomputed from the stored member scores with the saved
    state; its flag follows its recorded threshold; run.json names the members."""
    from ood_ray.detectors.fusion import CDFFusion

    ood = read_run(model_run["out"])["ood"]
    members = ["score_knn_twin_a", "score_mahalanobis_pp_twin_a", "score_vim_twin_a"]
    assert ood["fusion"]["members"] == members and ood["fusion"]["missing"] == []
    assert ood["fusion"]["method"] == "mean" and ood["fusion"]["n_cdf"] > 0
    saved = ood["detectors"]["score_fusion"]
    assert saved["members"] == ood["fusion"]["members"]
    fusion = CDFFusion.from_state_dict(json.loads((Path(model_run["out"]) / saved["file"]).read_text()))
    rows = q(model_run, f"SELECT {', '.join(members)}, score_fusion AS f, is_ood_fusion AS flag FROM images "
                        "WHERE status = 'ok'").to_pylist()
    X = np.asarray([[r[m] for m in members] for r in rows], dtype=np.float64)
    np.testing.assert_allclose(fusion.score(X), [r["f"] for r in rows], rtol=1e-5, atol=1e-6)
    assert all(0.0 <= r["f"] <= 1.0 for r in rows)
    threshold = ood["thresholds"]["score_fusion"]["threshold"]
    assert all(r["flag"] == (r["f"] > threshold) for r in rows)


def test_label_issues_by_confident_learning_equal_cleanlab_on_the_stored_probabilities(model_run):
    """The classifier over the labels (class_names given) gets confident learning: its thresholds
    are the mean stored self-confidence per class over the reference rows, its flags equal cleanlab's
    ``find_label_issues(filter_by="confident_learning")`` on the probabilities the actor stored, and
    it is the label model; the 1000-class twins are skipped with the reason."""
    from cleanlab.filter import find_label_issues

    run = read_run(model_run["out"])
    issues = run["label_issues"]
    assert issues["label_model"] == "tiny_classifier" and issues["method"] == "cl"
    assert "3 distinct reference labels for 1000 outputs" in issues["skipped"]["twin_a"]
    fitted = issues["models"]["tiny_classifier"]
    assert fitted["class_names"] == ["circles", "squares", "stripes"] and fitted["how"] == "models[].class_names"
    rows = q(model_run, "SELECT i.image_id, i.label, i.split, p.probabilities, i.score_label_issue_cl_tiny_classifier AS s, "
                        "i.is_label_issue_cl_tiny_classifier AS f, i.score_label_issue AS s_all, i.is_label_issue AS f_all "
                        "FROM images i JOIN predictions p ON p.image_id = i.image_id AND p.model = 'tiny_classifier' "
                        "WHERE i.status = 'ok' ORDER BY i.image_id").to_pylist()
    names = fitted["class_names"]
    given = np.asarray([names.index(r["label"]) for r in rows])
    probs = np.asarray([r["probabilities"] for r in rows], dtype=np.float64)
    train = np.asarray([r["split"] == "train" for r in rows])
    expected_t = [probs[train & (given == j), j].mean() for j in range(3)]
    np.testing.assert_allclose(issues["models"]["tiny_classifier"]["thresholds"], expected_t, atol=2e-6)
    np.testing.assert_allclose([r["s"] for r in rows], 1 - probs[np.arange(len(rows)), given], atol=2e-6)
    ours = np.asarray([r["f"] for r in rows])
    theirs = find_label_issues(given[train], probs[train], filter_by="confident_learning")
    assert (ours[train] != theirs).sum() <= 1  # float32 stored probabilities vs the float64 head
    assert [r["f_all"] for r in rows] == [r["f"] for r in rows] and [r["s_all"] for r in rows] == [r["s"] for r in rows]
    assert run["quality"]["flagged"]["label_issue"] == int(ours.sum())


def test_label_issues_by_neighbour_vote_equal_the_stored_neighbours(model_run):
    """``score_label_issue_knn_<model>``: the share of the 10 nearest labelled reference neighbours
    (the ``neighbors`` table) whose label differs; its flag above one half."""
    rows = q(model_run, """
        SELECT i.image_id, any_value(i.score_label_issue_knn_twin_a) AS s, any_value(i.is_label_issue_knn_twin_a) AS f,
               avg(CASE WHEN o.label <> i.label THEN 1.0 ELSE 0.0 END) AS expected, count(*) AS n
        FROM images i JOIN neighbors nb ON nb.image_id = i.image_id AND nb.model = 'twin_a' AND nb.rank <= 10
        JOIN images o ON o.image_id = nb.neighbor_id
        WHERE i.status = 'ok' GROUP BY i.image_id""").to_pylist()
    assert len(rows) == q(model_run, "SELECT count(*) FROM images WHERE status = 'ok'").column(0)[0].as_py()
    assert all(r["n"] == 10 for r in rows)
    np.testing.assert_allclose([r["s"] for r in rows], [r["expected"] for r in rows], atol=1e-6)
    assert all(r["f"] == (r["expected"] > 0.5) for r in rows)
    assert 0 < sum(r["s"] for r in rows)


def test_classifier_embeddings_come_with_a_warning_that_their_pairs_are_not_copies(model_run):
    """Embedding pairs from a classifier's penultimate layer group images of one class; the run says
    so, naming the classifiers and not the headless embedder."""
    run = model_run["run"]
    assert run["tables"]["duplicate_pairs"]["rows"] > 0
    warning = run["dedup"]["embedding_warning"]
    named = warning.split("models ", 1)[1].split(" are classifiers", 1)[0]
    assert "'twin_a'" in named and "'twin_b'" in named and "tiny_classifier" in named and "'vit'" not in named
    assert str(model_run["config"].knn.duplicate_similarity) in warning


def test_no_labels_skips_label_dependent_scores(ray_session, demo_dataset, workdir):
    run = run_audit(load_config(None, ["io.layout=flat", "models=[{name: test_vit, num_classes: 0}]",
                                       "ood.fusion=[knn, mahalanobis_pp, knn_mean]", "ood.fusion_model=test_vit"],
                                source=str(demo_dataset["images"]), out=str(workdir / "flat")))
    assert "score_clf_entropy_test_vit" in run["ood"]["skipped"]
    # Mahalanobis++ needs labels: the fusion goes on with the two members the run has, and says so.
    assert "score_mahalanobis_pp_test_vit" not in run["ood"]["detectors"]
    assert run["ood"]["fusion"]["members"] == ["score_knn_test_vit", "score_knn_mean_test_vit"]
    assert run["ood"]["fusion"]["missing"] == ["score_mahalanobis_pp_test_vit"]
    fused = run_query(str(workdir / "flat"), "SELECT count(score_fusion) AS n FROM images WHERE status = 'ok'")
    assert fused.column(0)[0].as_py() == run["status_counts"]["ok"]
    assert run["ood"]["reference"] == "all ok rows (no reference split)"
    assert run["tables"]["embeddings"]["rows"] == run["status_counts"]["ok"]


def test_a_bad_model_fails_before_the_pipeline(demo_dataset, workdir):
    with pytest.raises(ConfigError, match="not a timm model name"):
        run_audit(load_config(None, [], ["no_such_net"], source=str(demo_dataset["images"]), out=str(workdir / "bad")))
    assert not (workdir / "bad" / "images").exists()
