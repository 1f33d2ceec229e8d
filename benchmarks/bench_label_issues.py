"""Label issues on CIFAR-10 with 5% of the training labels flipped: ood-ray against cleanlab and DataEval.

The 50,000 CIFAR-10 training JPEGs (``cifar10/train_jpg.zip``) with 5% of their labels replaced by
another class (seeded; the truth written before the run), audited by ``ood-ray audit`` with the
CIFAR ResNet-56 of ``cifar10_resnets`` (the class mapping inferred: the sorted folder names are
CIFAR-10's class order). Rows:

- ood-ray's confident learning (``is_label_issue_cl_r56``; score ``1 - p_y``) and neighbour vote
  (``is_label_issue_knn_r56``, k = 10 on the ResNet-56 embedding);
- cleanlab 2's ``find_label_issues`` on the probabilities the run stored in ``predictions`` -- its
  default (``prune_by_noise_rate``) and ``filter_by="confident_learning"`` (the rule ood-ray
  implements; the flags should agree) -- ranked by ``get_label_quality_scores``;
- DataEval's ``label_errors`` (k = 50, its intra/extra-class distance ratio) on the run's stored
  ResNet-56 embeddings, in its own virtualenv (``--peer-python``) when there is one.

Precision and recall of the flags against the flipped set, AUROC of the scores, seconds. The
probabilities of a model trained on these very images are in-sample (cleanlab asks for
out-of-sample ones); that favours the model-based rows and is said in the README.

Usage: ``python benchmarks/bench_label_issues.py [--work DIR] [--rate 0.05] [--seed 0] [--json PATH]``
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

CHECKPOINT = SHARED / "cifar10_resnets" / "resnet56-4bfd9763.th"
MODEL = (f"models=[{{name: 'ood_ray.embed.cifar_resnet:resnet56', alias: r56, checkpoint: '{CHECKPOINT}'}}]")
SETTINGS = ["io.rows_per_block=512", "embed.batch_size=256", "lint.enabled=false", "dedup.enabled=false",
            "cluster.enabled=false", "drift.enabled=false", "ray.progress_interval_s=60"]
DATAEVAL = """
import json, sys, time, numpy as np
from dataeval.core._label_errors import label_errors
data = np.load(sys.argv[1])
started = time.perf_counter()
result = label_errors(data["X"], data["y"], k=50)
np.savez(sys.argv[2], scores=result["scores"], flagged=np.asarray(sorted(result["errors"]), dtype=np.int64),
         seconds=time.perf_counter() - started)
"""


def flipped_manifest(work: Path, rate: float, seed: int) -> tuple[Path, set[str]]:
    """The training JPEGs with ``rate`` of their labels moved to another class; the flipped URIs."""
    import zipfile

    train = work / "cifar10_train"
    if not train.exists():
        with zipfile.ZipFile(SHARED / "cifar10" / "train_jpg.zip") as archive:
            archive.extractall(train)
    files = sorted(train.glob("train/*/*.jpg"))
    classes = sorted({p.parent.name for p in files})
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(files), int(round(rate * len(files))), replace=False).tolist())
    manifest = work / f"flipped-{rate}-{seed}.csv"
    flipped = set()
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "split", "label"])
        for i, path in enumerate(files):
            label = path.parent.name
            if i in flip:
                label = classes[(classes.index(label) + int(rng.integers(1, len(classes)))) % len(classes)]
                flipped.add(str(path))
            writer.writerow([str(path), "train", label])
    return manifest, flipped


def row(name: str, flags: np.ndarray, scores: np.ndarray, truth: np.ndarray, seconds: float | None) -> dict:
    from ood_ray.metrics import compute_auroc

    found = int((flags & truth).sum())
    return {"method": name, "flagged": int(flags.sum()), "precision": found / max(int(flags.sum()), 1),
            "recall": found / int(truth.sum()), "auroc": compute_auroc(scores[~truth], scores[truth]), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-label-issues")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-python", default="/tmp/peers/bin/python")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "label_issues.json"))
    args = parser.parse_args()
    if prepare() is None:
        return 2
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from ood_ray.config import load_config
    from ood_ray.pipeline import run_audit
    from ood_ray.query import run_query

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest, flipped = flipped_manifest(work, args.rate, args.seed)
    out = str(work / "run")
    started = time.perf_counter()
    run = run_audit(load_config(None, [MODEL, *SETTINGS], source=str(manifest), out=out, overwrite=True))
    audit_seconds = time.perf_counter() - started
    print(f"audit of {run['objects_in']} images ({len(flipped)} labels flipped) in {audit_seconds:.0f} s; "
          f"label issues: {json.dumps({k: v for k, v in run['label_issues'].items() if k != 'models'})}", flush=True)
    fitted = run["label_issues"]["models"]["r56"]
    names = fitted["class_names"]
    data = run_query(out, """
        SELECT i.uri, i.label, p.probabilities, e.embedding,
               i.score_label_issue_cl_r56 AS cl, i.is_label_issue_cl_r56 AS cl_flag,
               i.score_label_issue_knn_r56 AS knn, i.is_label_issue_knn_r56 AS knn_flag
        FROM images i JOIN predictions p ON p.image_id = i.image_id AND p.model = 'r56'
        JOIN embeddings e ON e.image_id = i.image_id AND e.model = 'r56'
        WHERE i.status = 'ok' ORDER BY i.uri""").to_pydict()
    truth = np.asarray([uri in flipped for uri in data["uri"]])
    labels = np.asarray([names.index(label) for label in data["label"]])
    probs = np.asarray(data["probabilities"], dtype=np.float64)
    rows = [row("ood-ray confident learning (is_label_issue_cl)", np.asarray(data["cl_flag"]), np.asarray(data["cl"]), truth,
                run["stage_seconds"].get("label_issues")),
            row("ood-ray neighbour vote k=10 (is_label_issue_knn)", np.asarray(data["knn_flag"]), np.asarray(data["knn"]), truth, None)]
    quality = 1 - get_label_quality_scores(labels, probs)
    for filter_by in ("prune_by_noise_rate", "confident_learning"):
        t = time.perf_counter()
        flags = find_label_issues(labels, probs, filter_by=filter_by)
        rows.append(row(f"cleanlab find_label_issues ({filter_by})", flags, quality, truth, time.perf_counter() - t))
    agreement = float((np.asarray(data["cl_flag"]) == find_label_issues(labels, probs, filter_by="confident_learning")).mean())
    peer = Path(args.peer_python)
    if peer.exists():
        np.savez(work / "dataeval_in.npz", X=np.asarray(data["embedding"], dtype=np.float32), y=labels)
        done = subprocess.run([str(peer), "-c", DATAEVAL, str(work / "dataeval_in.npz"), str(work / "dataeval_out.npz")],
                              capture_output=True, text=True)
        if done.returncode == 0:
            result = np.load(work / "dataeval_out.npz")
            flags = np.zeros(len(truth), bool)
            flags[result["flagged"]] = True
            rows.append(row("DataEval label_errors k=50 (same embeddings)", flags, result["scores"], truth, float(result["seconds"])))
        else:
            print("DataEval failed:", done.stderr[-2000:])
    print(f"\n{'method':<52}{'flagged':>9}{'precision':>11}{'recall':>9}{'AUROC':>8}{'s':>8}")
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['method']:<52}{r['flagged']:>9}{r['precision']:>11.3f}{r['recall']:>9.3f}{r['auroc']:>8.4f}{seconds:>8}")
    print(f"ood-ray's confident-learning flags equal cleanlab's (confident_learning) on {agreement:.4%} of rows; "
          f"ResNet-56 top-1 accuracy on the given labels {fitted['accuracy']:.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "flipped": len(flipped), "images": run["objects_in"],
                                           "rate": args.rate, "seed": args.seed, "agreement_with_cleanlab_cl": agreement,
                                           "audit_seconds": audit_seconds, "stage_seconds": run["stage_seconds"],
                                           "label_issues": run["label_issues"]}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
