"""Structure benchmark: clusters against the true labels, drift detection, the autoencoder score,
and the time of each global pass against its sample size.

1. **Clusters** -- audit of CIFAR-10 test (10,000 JPEGs) with the CIFAR ResNet-56: the run's
   clusters (k by silhouette) against the true labels (adjusted Rand index, purity); also k = 10 and
   HDBSCAN on the same embeddings.
2. **Drift** -- one audit: reference = a seeded half of CIFAR-10 test (5,000); new splits from the
   other half: ``clean`` (1,000 CIFAR), ``dtd05`` / ``dtd10`` / ``dtd20`` (1,000 CIFAR + 5/10/20%
   DTD), ``mnist10`` (1,000 CIFAR + 10% MNIST: a coherent new class); a second audit compares the
   two halves (5,000 each). Reported: drifted statistics, the MMD
   and kNN-shift p-values and the new-class test per split.
3. **Autoencoder** -- audit without models: reference = 20,000 CIFAR-10 train images, then
   ``score_recon`` on CIFAR-10 test (2,000) and DTD (2,000): AUROC and the ratio of medians. Then
   the seed's setting (one narrow class): trained on 800 MNIST zeros, scored on the other 180
   zeros against other digits, CIFAR-10 and DTD (1,000 each).
4. **Global passes** -- seconds of each fit (k-means, silhouette search, HDBSCAN, PCA, UMAP, t-SNE,
   MMD, new-class detection) on 1k / 5k / 10k ResNet-56 embeddings.

Usage: ``python benchmarks/bench_structure.py [--work DIR] [--json PATH]``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402
R56 = ("models=[{name: 'ood_ray.embed.cifar_resnet:resnet56', alias: r56, checkpoint: '"
       + str(SHARED / "cifar10_resnets" / "resnet56-4bfd9763.th") + "'}]")
COMMON = ["io.rows_per_block=512", "embed.batch_size=256", "lint.enabled=false", "dedup.enabled=false",
          "ray.progress_interval_s=60", "knn.k=50"]


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "split", "label"])
        writer.writerows(rows)
    return path


def purity(truth: np.ndarray, clusters: np.ndarray) -> float:
    total = 0
    for c in np.unique(clusters):
        _, counts = np.unique(truth[clusters == c], return_counts=True)
        total += counts.max()
    return total / len(truth)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-structure")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "structure.json"))
    args = parser.parse_args()
    if prepare() is None:
        return 2
    import zipfile

    from sklearn.metrics import adjusted_rand_score

    from ood_ray.cluster.kmeans import fit_clusters
    from ood_ray.config import load_config
    from ood_ray.evaluate import evaluate
    from ood_ray.pipeline import run_audit
    from ood_ray.query import run_query

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cifar = [(str(p), "test", p.parent.name) for p in sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))]
    dtd = [(str(p), "dtd", p.parent.name) for p in sorted((SHARED / "dtd" / "resized32").glob("*/*.png"))]
    order = rng.permutation(len(cifar))
    half_a = [cifar[i] for i in order[:5000]]
    half_b = [cifar[i] for i in order[5000:]]
    dtd_order = rng.permutation(len(dtd))
    result: dict[str, object] = {}

    # 1 + 4: clusters of CIFAR-10 test, and the global passes' times on its embeddings
    out = str(work / "clusters")
    started = time.perf_counter()
    run = run_audit(load_config(None, [R56, *COMMON, "drift.enabled=false", "project.methods=[pca,umap]"],
                                source=str(write(work / "cifar_test.csv", cifar)), out=out, overwrite=True))
    audit_seconds = time.perf_counter() - started
    rows = run_query(out, """SELECT i.label, i.cluster, e.embedding FROM images i JOIN embeddings e USING (image_id)
                             ORDER BY i.image_id""").to_pydict()
    truth = np.unique(np.asarray(rows["label"]), return_inverse=True)[1]
    X = np.asarray(rows["embedding"], np.float32)
    chosen = np.asarray(rows["cluster"])
    clusters = {"run (k by silhouette)": (run["structure"]["clusters"]["k"], chosen)}
    for name, kwargs in (("k-means k=10", {"k": 10}), ("HDBSCAN", {"method": "hdbscan", "min_cluster_size": 50})):
        model = fit_clusters(X, **kwargs)
        clusters[name] = (len(model.centroids), model.assign(X)[0])
    result["clusters"] = [{"method": name, "k": int(k), "ari": float(adjusted_rand_score(truth, c)), "purity": purity(truth, c)}
                          for name, (k, c) in clusters.items()]
    result["clusters_audit_seconds"] = audit_seconds
    result["structure_report"] = run["structure"]
    print(f"clusters: audit of {len(cifar)} images in {audit_seconds:.0f} s; silhouette {run['structure']['clusters']['silhouette']}")
    for r in result["clusters"]:
        print(f"  {r['method']:<24} k={r['k']:<3} ARI {r['ari']:.3f}  purity {r['purity']:.3f}")
    result["pass_seconds"] = pass_times(X)

    # 2: drift
    splits = []
    mnist = sorted((SHARED / "mnist" / "test").glob("*/*.png"))
    mnist = [(str(mnist[i]), "mnist", mnist[i].parent.name) for i in rng.permutation(len(mnist))]
    taken = 0
    for name, share, part, extra in (("clean", 0.0, half_b[:1000], dtd), ("dtd05", 0.05, half_b[1000:2000], dtd),
                                     ("dtd10", 0.10, half_b[2000:3000], dtd), ("dtd20", 0.20, half_b[3000:4000], dtd),
                                     ("mnist10", 0.10, half_b[4000:], mnist)):
        n_extra = round(len(part) * share / (1 - share))
        splits.append([(u, name, label) for u, _, label in part])
        if extra is dtd:
            splits.append([(dtd[i][0], name, "dtd:" + dtd[i][2]) for i in dtd_order[taken:taken + n_extra]])
            taken += n_extra
        else:
            splits.append([(u, name, "mnist:" + label) for u, _, label in extra[:n_extra]])
    drift_rows = [(u, "train", label) for u, _, label in half_a] + [r for s in splits for r in s]
    out = str(work / "drift")
    run = run_audit(load_config(None, [R56, *COMMON, "cluster.k_max=15"], source=str(write(work / "drift.csv", drift_rows)),
                                out=out, overwrite=True))
    halves = [(u, "train", label) for u, _, label in half_a] + [(u, "half_b", label) for u, _, label in half_b]
    out_halves = str(work / "halves")
    run_halves = run_audit(load_config(None, [R56, *COMMON, "cluster.k_max=15"], source=str(write(work / "halves.csv", halves)),
                                       out=out_halves, overwrite=True))
    result["drift"] = drift_summary(out) + drift_summary(out_halves)
    result["drift_seconds"] = [run["drift"]["seconds"], run_halves["drift"]["seconds"]]
    print(f"drift (reference = 5,000 CIFAR-10 test images; FDR at 0.05 over {result['drift'][0]['stats_tests']} statistic tests):")
    print(f"  {'split':<8}{'n':>6}{'stats drifted':>15}{'labels V':>10}{'MMD p':>9}{'kNN-shift p':>13}{'P(new>ref)':>12}{'k ref/all':>11}{'new clusters':>14}")
    for r in result["drift"]:
        print(f"  {r['split']:<8}{r['n_new']:>6}{r['stats_drifted']:>15}{r['label_v']:>10.3f}{r['mmd_p']:>9.4f}{r['knn_p']:>13.2e}{r['knn_stat']:>12.3f}"
              f"{r['k_ref']:>6}/{r['k_all']:<4}{r['new_clusters']:>14}")

    # 3: autoencoder (no models)
    train_dir = work / "cifar10_train"
    if not train_dir.exists():
        with zipfile.ZipFile(SHARED / "cifar10" / "train_jpg.zip") as archive:
            archive.extractall(train_dir)
    train = sorted(train_dir.glob("train/*/*.jpg"))
    picks = rng.permutation(len(train))[:20000]
    ae_rows = [(str(train[i]), "train", train[i].parent.name) for i in picks]
    ae_rows += [(u, "test", label) for u, _, label in half_a[:2000]]
    ae_rows += [(dtd[i][0], "dtd", dtd[i][2]) for i in dtd_order[-2000:]]
    out = str(work / "autoencoder")
    started = time.perf_counter()
    run = run_audit(load_config(None, ["io.rows_per_block=512", "lint.enabled=false", "dedup.enabled=false",
                                       "autoencoder.enabled=true", "autoencoder.epochs=15", "autoencoder.batch_size=128",
                                       "autoencoder.max_train_images=20000"],
                                source=str(write(work / "ae.csv", ae_rows)), out=out, overwrite=True))
    ae_seconds = time.perf_counter() - started
    table = {r["score"]: r for r in evaluate(out, ood_splits=["dtd"], id_splits=["test"]).to_pylist()}
    medians = run_query(out, "SELECT split, median(score_recon) AS m FROM images WHERE split IN ('test', 'dtd') GROUP BY split").to_pylist()
    medians = {r["split"]: r["m"] for r in medians}
    result["autoencoder"] = {"auroc": table["score_recon"]["auroc"], "fpr95": table["score_recon"]["fpr_at_95tpr_id_positive"],
                             "median_cifar": medians["test"], "median_dtd": medians["dtd"],
                             "ratio": medians["dtd"] / medians["test"], "train": run["ood"]["autoencoder"],
                             "audit_seconds": ae_seconds, "stage_seconds": run["stage_seconds"]}
    a = result["autoencoder"]
    print(f"autoencoder: trained on 20,000 CIFAR-10 train images ({run['ood']['autoencoder']['final_loss']:.5f} final loss) "
          f"in a {ae_seconds:.0f} s audit; DTD vs CIFAR-10 test AUROC {a['auroc']:.3f}, FPR95 {a['fpr95']:.3f}, "
          f"median error {a['median_dtd']:.5f} vs {a['median_cifar']:.5f} ({a['ratio']:.2f}x)")
    result["autoencoder_one_class"] = one_class_autoencoder(work, rng)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.json}")
    return 0


def one_class_autoencoder(work: Path, rng: np.random.Generator) -> dict:
    """The seed's setting: an autoencoder trained on one narrow class (800 MNIST zeros), then new
    objects (other digits, CIFAR-10, DTD) against the held-out zeros."""
    from ood_ray.config import load_config
    from ood_ray.evaluate import evaluate
    from ood_ray.pipeline import run_audit
    from ood_ray.query import run_query

    mnist = SHARED / "mnist" / "test"
    zeros = sorted(str(p) for p in (mnist / "0").glob("*.png"))
    zeros = [zeros[i] for i in rng.permutation(len(zeros))]
    digits = sorted(str(p) for p in mnist.glob("[1-9]/*.png"))
    rows = [(p, "train", "0") for p in zeros[:800]] + [(p, "test", "0") for p in zeros[800:]]
    rows += [(digits[i], "digits", Path(digits[i]).parent.name) for i in rng.permutation(len(digits))[:1000]]
    cifar = sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))
    rows += [(str(cifar[i]), "cifar", cifar[i].parent.name) for i in rng.permutation(len(cifar))[:1000]]
    dtd = sorted((SHARED / "dtd" / "resized32").glob("*/*.png"))
    rows += [(str(dtd[i]), "dtd", dtd[i].parent.name) for i in rng.permutation(len(dtd))[:1000]]
    out = str(work / "autoencoder_one_class")
    run_audit(load_config(None, ["io.rows_per_block=256", "lint.enabled=false", "dedup.enabled=false", "autoencoder.enabled=true",
                                 "autoencoder.epochs=30", "autoencoder.batch_size=64"],
                          source=str(write(work / "ae_one_class.csv", rows)), out=out, overwrite=True))
    table = {r["ood_set"]: r for r in evaluate(out, ood_splits=["digits", "cifar", "dtd"], id_splits=["test"]).to_pylist()
             if r["score"] == "score_recon"}
    medians = {r["split"]: r["m"] for r in run_query(out, "SELECT split, median(score_recon) AS m FROM images GROUP BY split").to_pylist()}
    result = {name: {"auroc": table[name]["auroc"], "ratio": medians[name] / medians["test"]} for name in ("digits", "cifar", "dtd")}
    print("autoencoder trained on 800 MNIST zeros, against the 180 held-out zeros: " + ", ".join(
        f"{name} AUROC {r['auroc']:.3f}, median error {r['ratio']:.1f}x" for name, r in result.items()))
    return result


def drift_summary(out: str) -> list[dict]:
    from ood_ray.query import run_query

    rows = run_query(out, "SELECT * FROM drift").to_pylist()
    summary = []
    for split in sorted({r["split"] for r in rows}):
        mine = [r for r in rows if r["split"] == split]
        stats = [r for r in mine if r["test"] in ("ks", "cvm")]
        mmd = next(r for r in mine if r["test"] == "mmd")
        knn = next(r for r in mine if r["test"] == "knn_shift")
        new = next(r for r in mine if r["test"] == "new_classes")
        labels = next(r for r in mine if r["test"] == "label_shift")
        detail = json.loads(new["detail"])
        summary.append({"split": split, "n_new": knn["n_new"], "n_reference": knn["n_reference"], "mmd_n": mmd["n_new"],
                        "stats_drifted": sum(r["drifted"] for r in stats), "stats_tests": len(stats),
                        "drifted_stats": sorted({r["feature"] for r in stats if r["drifted"]}),
                        "mmd_p": mmd["p_value"], "mmd_drifted": mmd["drifted"], "knn_p": knn["p_value"],
                        "knn_stat": knn["statistic"], "knn_drifted": knn["drifted"],
                        "label_v": labels["statistic"], "label_p": labels["p_value"], "label_drifted": labels["drifted"],
                        "k_ref": detail["k_reference"], "k_all": detail["k_combined"], "new_clusters": len(detail["new_clusters"])})
    return summary


def pass_times(X: np.ndarray) -> list[dict]:
    from ood_ray.cluster.kmeans import fit_clusters, silhouette_by_k
    from ood_ray.detectors.knn import l2_normalize
    from ood_ray.drift.new_classes import detect_new_classes
    from ood_ray.drift.tests import mmd_test
    from ood_ray.project.maps import fit_projections

    rows = []
    print("global passes (seconds) on ResNet-56 embeddings (64-d):")
    for n in (1000, 5000, 10000):
        S = X[:n]
        ids = [str(i) for i in range(n)]
        row = {"sample": n}
        row["kmeans_k10"], _ = timed(fit_clusters, S, k=10)
        row["silhouette_k2_20"], _ = timed(silhouette_by_k, l2_normalize(S), range(2, 21), 25, 0, min(n, 4000))
        row["hdbscan"], _ = timed(fit_clusters, S, method="hdbscan", min_cluster_size=50)
        row["pca"], _ = timed(fit_projections, S, ids, ["pca"])
        row["umap"], _ = timed(fit_projections, S, ids, ["umap"])
        row["tsne"], _ = timed(fit_projections, S, ids, ["tsne"], tsne_sample=n) if n <= 5000 else (float("nan"), None)
        half = n // 2
        row["mmd_200_perms"], _ = timed(mmd_test, S[:half], X[-half:], 200) if n <= 5000 else (float("nan"), None)
        row["new_classes"], _ = timed(detect_new_classes, S[:half], X[-half:], k_max=15) if n <= 5000 else (float("nan"), None)
        rows.append(row)
        print("  " + ", ".join(f"{k} {v:.2f}" if k != "sample" else f"n={v}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
