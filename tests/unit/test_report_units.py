"""The report's pieces without Ray: histograms and ROC curves from DuckDB against NumPy and
scikit-learn, the thumbnail maker on real hostile files, the display conversion, the options."""

from __future__ import annotations

import io

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from ood_ray.config import ConfigError
from ood_ray.report.context import ReportContext, histogram, roc_curve
from ood_ray.report.options import ReportOptions
from ood_ray.report.sections.base import share
from ood_ray.report.sections.ood import score_model
from ood_ray.report.thumbnails import ThumbnailRequest, displayable, make_thumbnail


def _context(table: pa.Table) -> ReportContext:
    con = duckdb.connect()
    con.register("images", table)
    return ReportContext(con, {}, "", ReportOptions())


def test_histogram_equals_numpy_per_group():
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    values[:7] = [np.nan, np.inf, -np.inf, np.nan, np.nan, np.nan, np.nan]
    splits = rng.choice(["train", "test"], size=5000)
    status = np.where(rng.random(5000) < 0.1, "bad", "ok")
    ctx = _context(pa.table({"v": values, "split": splits, "status": status}))
    hist = histogram(ctx, '"v"', "status = 'ok'", {"train": "split = 'train'", "rest": "true"}, 25)
    ok = (status == "ok") & np.isfinite(values)
    edges = np.histogram_bin_edges(values[ok], bins=25)
    np.testing.assert_allclose(hist["edges"], edges, rtol=1e-12, atol=1e-12)
    for name, mask in (("train", splits == "train"), ("rest", splits != "train")):
        expected, _ = np.histogram(values[ok & mask], bins=edges)
        assert hist["counts"][name] == expected.tolist()
    assert sum(hist["n"].values()) == ok.sum()


def test_histogram_of_a_constant_and_of_nothing():
    ctx = _context(pa.table({"v": [2.0, 2.0, 2.0], "status": ["ok"] * 3}))
    hist = histogram(ctx, '"v"', "status = 'ok'", {"all": "true"}, 4)
    assert sum(hist["counts"]["all"]) == 3 and hist["edges"][0] < 2.0 < hist["edges"][-1]
    assert histogram(ctx, '"v"', "status = 'bad'", {"all": "true"}, 4) is None


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_area_equals_scikit_learn(ties):
    rng = np.random.default_rng(1)
    n_id, n_ood = 700, 300
    scores = np.concatenate([rng.normal(0, 1, n_id), rng.normal(1.2, 1, n_ood)])
    if ties:
        scores = np.round(scores, 1)
    truth = np.array([False] * n_id + [True] * n_ood)
    split = np.where(truth, "ood", "id")
    ctx = _context(pa.table({"s": scores.astype(np.float32), "split": split, "status": ["ok"] * len(split)}))
    curve = roc_curve(ctx, "s", "split = 'id'", "split = 'ood'", points=len(scores) + 1)
    area = np.trapezoid(curve["tpr"], curve["fpr"])
    assert area == pytest.approx(roc_auc_score(truth, scores.astype(np.float32)), abs=1e-12)
    assert (curve["n_id"], curve["n_ood"]) == (n_id, n_ood)
    coarse = roc_curve(ctx, "s", "split = 'id'", "split = 'ood'", points=20)
    assert len(coarse["fpr"]) <= 21 and coarse["fpr"][-1] == coarse["tpr"][-1] == 1.0
    assert np.all(np.diff(coarse["fpr"]) >= 0) and np.all(np.diff(coarse["tpr"]) >= 0)
    assert np.trapezoid(coarse["tpr"], coarse["fpr"]) == pytest.approx(area, abs=0.03)


def test_displayable_depths_and_alpha():
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4, 1) * 5000)
    image = displayable(grey16)
    assert image.mode == "L" and np.asarray(image)[2, 3] == round(55000 / 65535 * 255)
    floats = np.array([[[-1.0], [0.0]], [[1.0], [np.nan]]])
    assert np.asarray(displayable(floats)).ravel().tolist() == [0, 128, 255, 0]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]
    rgba[0, 1] = [255, 0, 0, 0]
    out = np.asarray(displayable(rgba))
    assert out.shape == (1, 2, 3) and out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [128, 128, 128]


def _png(mode: str, size=(300, 200), dtype=np.uint8) -> bytes:
    buffer = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16)).save(buffer, format="PNG")
    else:
        Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_thumbnails_of_real_and_hostile_files(tmp_path):
    (tmp_path / "photo.png").write_bytes(_png("RGB"))
    (tmp_path / "deep.png").write_bytes(_png("I;16"))
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    good = _png("RGB")
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    limits = (178_956_970, 1 << 30, None)
    made = make_thumbnail(ThumbnailRequest("a", str(tmp_path / "photo.png"), 64), *limits)
    assert made.error is None and Image.open(io.BytesIO(made.data)).size == (64, 43)
    deep = make_thumbnail(ThumbnailRequest("b", str(tmp_path / "deep.png"), 64), *limits)
    assert deep.error is None and Image.open(io.BytesIO(deep.data)).mode == "L"
    gone = make_thumbnail(ThumbnailRequest("c", str(tmp_path / "nothing.png"), 64), *limits)
    assert gone.data is None and gone.error.startswith("missing")
    text = make_thumbnail(ThumbnailRequest("d", str(tmp_path / "text.jpg"), 64), *limits)
    assert text.data is None and text.error.startswith("undecodable")
    cut = make_thumbnail(ThumbnailRequest("e", str(tmp_path / "cut.png"), 64), *limits)
    assert cut.data is None and cut.error.startswith("truncated")
    small_limit = make_thumbnail(ThumbnailRequest("f", str(tmp_path / "photo.png"), 64), 1000, 1 << 30, None)
    assert small_limit.data is None and small_limit.error.startswith("too_large")
    folder = make_thumbnail(ThumbnailRequest("g", str(tmp_path), 64), *limits)
    assert folder.data is None and folder.error.startswith("unreadable")


def test_options_fail_with_the_key_and_value():
    with pytest.raises(ConfigError, match=r"report.map_points=-1"):
        ReportOptions(map_points=-1)
    with pytest.raises(ConfigError, match=r"report.thumb_px='big'"):
        ReportOptions(thumb_px="big")
    assert ReportOptions(thumbnails=0).thumbnails == 0


def test_score_model_and_budget_share():
    assert score_model("score_knn_mean_r56", ["r5", "r56", "6"]) == "r56"
    assert score_model("score_ensemble_entropy", ["r56"]) is None
    assert share(120, 23 * 2, 1, 6) == 2 and share(120, 2, 1, 6) == 6 and share(0, 3, 1, 6) == 0


def test_cli_refuses_a_bad_option_and_a_folder_without_a_run(tmp_path):
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "ood_ray", "report", str(tmp_path), "--map-points", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "report.map_points=-1" in bad.stderr
    empty = subprocess.run([sys.executable, "-m", "ood_ray", "report", str(tmp_path)], capture_output=True, text=True,
                           timeout=60)
    assert empty.returncode == 2 and "no committed run" in empty.stderr



def test_drift_section_draws_numeric_statistics_only():
    from ood_ray.report.sections.drift import DRIFT

    rng = np.random.default_rng(2)
    images = pa.table({"image_id": [f"i{k}" for k in range(200)], "status": ["ok"] * 200,
                       "split": ["train"] * 100 + ["new"] * 100, "label": ["cat", "dog"] * 100,
                       "mean": np.r_[rng.normal(0.4, 0.05, 100), rng.normal(0.6, 0.05, 100)]})
    drift = pa.table({"split": ["new", "new"], "test": ["chi2", "ks"], "feature": ["label", "mean"],
                      "model": pa.nulls(2, pa.string()), "statistic": [9.0, 0.8], "p_value": [1e-3, 1e-9],
                      "threshold": [0.05, 0.05], "drifted": [True, True], "n_reference": [100, 100], "n_new": [100, 100]})
    con = duckdb.connect()
    con.register("images", images)
    con.register("drift", drift)
    run = {"tables": {"drift": {"rows": 2}}, "drift": {"compared": "every other split against split 'train'"},
           "stages": {"scan": {"state": {"reference_split": "train"}}}}
    data = DRIFT.collect(ReportContext(con, run, "", ReportOptions()))
    assert (data["drifted"], data["total"]) == (2, 2)
    assert [p["feature"] for p in data["plots"]] == ["mean"]
