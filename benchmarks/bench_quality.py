"""The quality table: every OOD score of ood-ray side by side on real data.

ID = CIFAR-10 test, reference = CIFAR-10 train (``train_jpg.zip``), OOD = DTD (``dtd/resized32``)
and MNIST test; models = the four CIFAR ResNets of ``cifar10_resnets`` through the custom import
path (ImageNet mean/std at 32 px). One audit computes every score; ``ood-ray evaluate`` gives
AUROC / FPR@95 (ID positive) / TNR@95 per OOD set and their mean. Rows: the ResNet-56's MSP, max
logit, energy, entropy, classifier-ensemble entropy (the OoD Tool's probes), kNN and kNN-mean
(k = 50), Mahalanobis and RMD, GEN, ReAct, ASH-S, SCALE, fDBD, ViM, NNGuide, Mahalanobis++ and
RMD++; the ensemble entropy and mutual information over the four ResNets.

pytorch-ood's MSP, energy and Mahalanobis run on the same logits and penultimate features (read
back from the run's tables) and are shown beside ours. Then the holdout-class protocol on CIFAR-10:
4 of the 10 classes held out (seeds 0, 1, 2), ResNet-56, reference = the 6 remaining classes'
training images -- twice per seed: with the ResNet-56 as it is (its 10-class head was trained on the
held-out classes, so every score that reads the head is handicapped) and with a 6-class head
(``--head-per-class`` training JPEGs of each reference class, only the head trained by ``ood-ray
finetune --method ce`` with ``finetune.layers=head``; the body is the pretrained one, which has seen
all 10 classes), which is the protocol's fair case for the head scores.

The issue's check run (ResNet-56, same files): AUROC/FPR95 of MSP 0.756/0.824, energy 0.750/0.773,
kNN 0.874/0.490 on DTD; MSP 0.807/0.821, energy 0.916/0.501, kNN 0.996/0.017 on MNIST.

Usage: ``python benchmarks/bench_quality.py [--work DIR] [--seeds 0 1 2] [--heads pretrained retrained]
[--json PATH]`` (``--seeds`` with no value: no holdout runs; ``--holdout-only``: only the holdout runs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

from bench_knn_quality import write_manifest  # noqa: E402

CHECKPOINTS = {"r20": "resnet20-12fca82f.th", "r32": "resnet32-d509ac18.th", "r44": "resnet44-014dd654.th",
               "r56": "resnet56-4bfd9763.th"}
ROWS = [("MSP", "score_msp_r56"), ("max logit", "score_maxlogit_r56"), ("energy", "score_energy_r56"),
        ("entropy", "score_entropy_r56"), ("classifier-ensemble entropy", "score_clf_entropy_r56"),
        ("kNN (k=50)", "score_knn_r56"), ("kNN mean (k=50)", "score_knn_mean_r56"),
        ("Mahalanobis", "score_mahalanobis_r56"), ("RMD", "score_rmd_r56"),
        ("GEN", "score_gen_r56"), ("ReAct", "score_react_r56"), ("ASH-S@90", "score_ash_r56"), ("SCALE@85", "score_scale_r56"),
        ("fDBD", "score_fdbd_r56"), ("ViM", "score_vim_r56"), ("NNGuide", "score_nnguide_r56"),
        ("Mahalanobis++", "score_mahalanobis_pp_r56"), ("RMD++", "score_rmd_pp_r56"),
        ("fusion (kNN + Mahalanobis++ + ViM, mean of CDFs)", "score_fusion"),
        ("ensemble entropy (4 ResNets)", "score_ensemble_entropy"), ("mutual information (4 ResNets)", "score_mutual_information")]
HEADS = ("pretrained", "retrained")
CHECK = {("score_msp_r56", "dtd"): 0.756, ("score_energy_r56", "dtd"): 0.750, ("score_knn_r56", "dtd"): 0.874,
         ("score_msp_r56", "mnist"): 0.807, ("score_energy_r56", "mnist"): 0.916, ("score_knn_r56", "mnist"): 0.996}


def models_override(aliases: list[str]) -> str:
    entries = [f"{{name: 'ood_ray.embed.cifar_resnet:resnet{a[1:]}', alias: {a}, checkpoint: '{SHARED / 'cifar10_resnets' / CHECKPOINTS[a]}'}}"
               for a in aliases]
    return "models=[" + ", ".join(entries) + "]"


COMMON = ["knn.k=50", "ood.fusion_model=r56", "io.rows_per_block=512", "embed.batch_size=256", "lint.enabled=false", "dedup.enabled=false",
          "ray.progress_interval_s=60", "ood.clf_entropy=all", "cluster.enabled=false", "drift.enabled=false"]


def pytorch_ood_rows(out: str) -> list[dict]:
    """pytorch-ood's MSP, energy and Mahalanobis on the run's own logits and features."""
    import torch
    from pytorch_ood.detector import EnergyBased, Mahalanobis, MaxSoftmax

    from ood_ray.metrics import compute_auroc
    from ood_ray.query import run_query

    logits = run_query(out, """SELECT i.split, p.logits FROM predictions p JOIN images i USING (image_id)
                               WHERE p.model = 'r56' AND i.split IN ('test', 'dtd', 'mnist')""").to_pydict()
    split = np.asarray(logits["split"])
    z = torch.tensor(np.asarray(logits["logits"], dtype=np.float32))
    feats = run_query(out, """SELECT i.split, i.label, e.embedding FROM embeddings e JOIN images i USING (image_id)
                              WHERE e.model = 'r56'""").to_pydict()
    fsplit = np.asarray(feats["split"])
    X = torch.tensor(np.asarray(feats["embedding"], dtype=np.float32))
    classes = sorted(set(np.asarray(feats["label"])[fsplit == "train"]))
    y = torch.tensor([classes.index(label) for label in np.asarray(feats["label"])[fsplit == "train"]])
    mahalanobis = Mahalanobis(None)
    mahalanobis.fit_features(X[torch.tensor(fsplit == "train")], y)
    scores = {
        "MSP": (MaxSoftmax.score(z).numpy(), split),
        "energy": (EnergyBased.score(z).numpy(), split),
        "Mahalanobis": (mahalanobis.predict_features(X).numpy(), fsplit),
    }
    rows = []
    for name, (values, where) in scores.items():
        for ood in ("dtd", "mnist"):
            rows.append({"score": name, "ood": ood, "auroc": compute_auroc(values[where == "test"], values[where == ood])})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-quality")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "quality.json"))
    parser.add_argument("--holdout-only", action="store_true", help="only the holdout runs (the big audit skipped)")
    parser.add_argument("--heads", nargs="*", choices=HEADS, default=list(HEADS),
                        help="holdout runs with the pretrained 10-class head, a retrained 6-class head, or both")
    parser.add_argument("--head-per-class", type=int, default=1000, help="training JPEGs per class for the 6-class head")
    parser.add_argument("--head-epochs", type=int, default=5)
    args = parser.parse_args()
    if prepare() is None:
        return 2
    from ood_ray.config import load_config
    from ood_ray.evaluate import evaluate
    from ood_ray.pipeline import run_audit

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(work)
    if args.holdout_only:
        holdout = holdout_rows(work, args.seeds, args.heads, args.head_per_class, args.head_epochs)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"holdout": holdout}, indent=2))
        print(f"wrote {args.json}")
        return 0
    out = str(work / "run")
    started = time.perf_counter()
    run = run_audit(load_config(None, [models_override(list(CHECKPOINTS)), *COMMON], source=str(manifest), out=out, overwrite=True))
    audit_seconds = time.perf_counter() - started
    table = {(r["score"], r["ood_set"]): r for r in evaluate(out, ood_splits=["dtd", "mnist"], id_splits=["test"]).to_pylist()}
    print(f"audit of {run['objects_in']} images with 4 models in {audit_seconds:.0f} s ({run['stage_seconds']})")
    header = f"{'score':<32}" + "".join(f"{s + ' ' + m:>14}" for s in ("DTD", "MNIST", "mean") for m in ("AUROC", "FPR95", "TNR95"))
    print(header)
    results = []
    for label, column in ROWS:
        cells = []
        for ood in ("dtd", "mnist", "mean"):
            r = table[(column, ood)]
            cells += [r["auroc"], r["fpr_at_95tpr_id_positive"], r["tnr_at_95tpr"]]
            results.append({"label": label, "score": column, "ood": ood, **{k: r[k] for k in (
                "auroc", "aupr_in", "aupr_out", "fpr_at_95tpr_id_positive", "tnr_at_95tpr", "fpr_at_95tpr_ood_positive",
                "detection_error")}, "check_auroc": CHECK.get((column, ood))})
        print(f"{label:<32}" + "".join(f"{c:>14.3f}" for c in cells), flush=True)
    misses = [(r["score"], r["ood"], r["auroc"], r["check_auroc"]) for r in results
              if r["check_auroc"] is not None and abs(r["auroc"] - r["check_auroc"]) > 0.01]
    print("check run reproduced within +-0.01 AUROC" if not misses else f"NOT within 0.01 of the check run: {misses}")

    peer = pytorch_ood_rows(out)
    print("pytorch-ood on the same logits/features (AUROC):  " + ", ".join(f"{r['score']} {r['ood']} {r['auroc']:.3f}" for r in peer))

    holdout = holdout_rows(work, args.seeds, args.heads, args.head_per_class, args.head_epochs)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"table": results, "pytorch_ood": peer, "holdout": holdout,
                                           "audit_seconds": audit_seconds, "stage_seconds": run["stage_seconds"]}, indent=2))
    print(f"wrote {args.json}")
    return 0


def holdout_rows(work: Path, seeds: list[int], heads: list[str], head_per_class: int, head_epochs: int) -> list[dict]:
    """The holdout protocol per seed and head: 4 CIFAR classes held out, ResNet-56, AUROC of every score."""
    import csv

    from ood_ray.config import load_config
    from ood_ray.holdout import choose_classes, run_holdout
    from ood_ray.query import run_query

    with open(manifest_cifar(work), newline="") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    holdout = []
    for seed in seeds:
        held = choose_classes(labels, None, 4, seed)
        for head in heads:
            holdout_out = work / f"holdout-{seed}" if head == "pretrained" else work / f"holdout-{seed}-{head}"
            if head == "pretrained":
                alias, files, sets = "r56", None, [models_override(["r56"])]
            else:
                alias = retrain_head(work, seed, held, head_per_class, head_epochs)
                files, sets = str(work / f"head-{seed}" / "model.yaml"), []
            config = load_config(files, [*sets, *COMMON, f"ood.fusion_model={alias}"], source=str(manifest_cifar(work)),
                                 out=str(holdout_out), overwrite=True)
            started = time.perf_counter()
            hrun = run_holdout(config, held, None, seed, id_split="test")
            rows = {r["score"].replace(f"_{alias}", "_r56"): r
                    for r in run_query(str(holdout_out), "SELECT * FROM evaluation").to_pylist()}
            holdout.append({"seed": seed, "head": head, "held_out": hrun["holdout"]["classes"],
                            "seconds": time.perf_counter() - started,
                            **{column: rows[column]["auroc"] for _, column in ROWS if column in rows}})
            print(f"holdout seed {seed}, {head} head (held out {hrun['holdout']['classes']}): " + ", ".join(
                f"{label} {rows[column]['auroc']:.3f}" for label, column in ROWS if column in rows), flush=True)
    summarize_holdout(holdout)
    return holdout


def retrain_head(work: Path, seed: int, held: list[str], per_class: int, epochs: int) -> str:
    """The ResNet-56 with a new head over the reference classes, only the head trained; its alias."""
    import yaml

    from ood_ray.config import load_config
    from ood_ray.finetune.run import run_finetune

    out = work / f"head-{seed}"
    done = out / "finetune.json"
    if not done.exists() or json.loads(done.read_text()).get("held_out") != held:
        classes = 10 - len(held)
        config = load_config(None, [models_override(["r56"]), "finetune.method=ce", "finetune.layers=head",
                                    f"finetune.epochs={epochs}", "finetune.learning_rate=0.01",
                                    f"finetune.max_images={classes * per_class}", f"finetune.seed={seed}"],
                             source=str(manifest_cifar(work)), out=str(out))
        record = run_finetune(config, None, split="train", holdout_classes=held)
        print(f"6-class head, seed {seed}: {record['seconds']['per_epoch']:.1f} s/epoch, validation accuracy "
              f"{record['epochs'][-1]['validation_accuracy']:.4f}", flush=True)
    return yaml.safe_load((out / "model.yaml").read_text())["models"][0]["alias"]


def summarize_holdout(holdout: list[dict]) -> None:
    """Mean +- standard deviation of each score's AUROC over the seeds, per head."""
    for head in dict.fromkeys(r["head"] for r in holdout):
        runs = [r for r in holdout if r["head"] == head]
        print(f"\nheld-out classes, {head} head, AUROC mean +- std over {len(runs)} seed(s):")
        for label, column in ROWS:
            values = [r[column] for r in runs if column in r]
            if values:
                print(f"  {label:<52}{np.mean(values):.3f} +- {np.std(values):.3f}  " + " ".join(f"{v:.3f}" for v in values))


def manifest_cifar(work: Path) -> Path:
    """CIFAR-10 train + test only (the holdout protocol needs no outside OOD set)."""
    import csv

    path = work / "cifar_only.csv"
    if not path.exists():
        with open(work / "manifest.csv", newline="") as f, open(path, "w", newline="") as g:
            reader, writer = csv.reader(f), csv.writer(g)
            writer.writerow(next(reader))
            writer.writerows(row for row in reader if row[1] in ("train", "test"))
    return path


if __name__ == "__main__":
    sys.exit(main())
