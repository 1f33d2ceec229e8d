"""Outlier Exposure and MixOE fine-tuning measured: does the fine-tuned model detect OOD better?

Model: the CIFAR ResNet-20 of ``cifar10_resnets`` (pretrained on all 10 CIFAR-10 classes). Data:
``--per-class`` training JPEGs of each CIFAR-10 class (the first ones by file name), 4 classes held
out (drawn as ``ood-ray holdout --holdout-count 4 --holdout-seed SEED`` draws them), so the fine-tunes
see 6 classes.

Four models, each made by ``ood-ray finetune`` (``run_finetune``) on the test suite's code path:

- **baseline**: the ResNet-20 with a new 6-class head, only the head trained (``method: ce``,
  ``layers: head``), ``--head-epochs`` epochs at ``--head-lr``;
- **CE**: the baseline fine-tuned whole with cross-entropy alone for ``--epochs`` (the control: what
  the extra training does without outliers);
- **OE** and **MixOE**: the baseline fine-tuned whole for ``--epochs`` with the paper defaults
  (``finetune:`` defaults: SGD 1e-3 cosine, batch 32, OE lambda 0.5, MixOE mixup Beta(1, 1), beta 5).

Auxiliary outliers: ``--outliers`` random square crops (side 64-384 px, resized to 32 px) of the
ImageNet photos of ``foolbox_samples/imagenet_20`` whose classes are not CIFAR-10 classes (the dogs,
birds and the two jeeps are left out: 13 photos) -- a source different from every test OOD set.

Each model is then judged the documented way: ``ood-ray holdout`` of the same manifest with its
``model.yaml`` (ID = the 6 classes of CIFAR-10 test, the held-out 4 classes of CIFAR-10 test as
``holdout``, kNN reference = the 6 classes' fine-tuning images), plus MNIST (``--mnist`` images of
its test set) and DTD (1,200 textures at 32 px) as coarse OOD sets in the same audit;
``ood-ray evaluate`` gives AUROC and TNR at 95% TPR of MSP, energy and kNN (k = 50) per set.

Caveat printed with the table: the pretrained body has seen the held-out classes (it was trained on
all 10), as in any "fine-tune a pretrained model" setting; only the head and the fine-tunes have not.

Usage: ``python benchmarks/bench_finetune.py [--work DIR] [--per-class 1000] [--epochs 10] [--json PATH]``
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
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_setup import SHARED, prepare  # noqa: E402

from bench_knn_quality import write_manifest  # noqa: E402

BASE = {"name": "ood_ray.embed.cifar_resnet:resnet20", "alias": "r20",
        "checkpoint": str(SHARED / "cifar10_resnets" / "resnet20-12fca82f.th")}
#: ImageNet-1k classes among the foolbox photos that are CIFAR-10 classes (dogs, birds, a jeep): not outliers
CIFAR_LIKE_IMAGENET = {243, 251, 129, 99, 22, 609}
SCORES = (("MSP", "msp"), ("energy", "energy"), ("kNN", "knn"))
OOD_SETS = (("held-out classes", "holdout"), ("MNIST", "mnist"), ("DTD", "dtd"))
AUDIT = ["knn.k=50", "io.rows_per_block=512", "embed.batch_size=256", "lint.enabled=false", "dedup.enabled=false",
         "cluster.enabled=false", "drift.enabled=false", "autoencoder.enabled=false", "label_issues.enabled=false",
         "ray.progress_interval_s=60"]


def make_outliers(folder: Path, count: int, seed: int) -> list[str]:
    """``count`` seeded crops of the non-CIFAR ImageNet photos as 32-px PNGs; the photos used."""
    from PIL import Image

    photos = [p for p in sorted((SHARED / "foolbox_samples" / "imagenet_20").glob("*.jpg"))
              if int(p.stem.rsplit("_", 1)[1]) not in CIFAR_LIKE_IMAGENET]
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) != count:
        rng = np.random.default_rng(seed)
        images = [Image.open(p).convert("RGB") for p in photos]
        for i in range(count):
            image = images[rng.integers(len(images))]
            side = int(rng.integers(64, min(image.size) // 4 * 3 + 1))
            left, top = int(rng.integers(0, image.width - side + 1)), int(rng.integers(0, image.height - side + 1))
            image.crop((left, top, left + side, top + side)).resize((32, 32), Image.LANCZOS).save(folder / f"{i:05d}.png")
    return [p.name for p in photos]


def write_benchmark_manifest(work: Path, per_class: int, mnist: int, seed: int) -> Path:
    """CIFAR-10 train (``per_class`` per class) + test, DTD, a seeded MNIST sample."""
    rows: dict[str, list[list[str]]] = {}
    with open(write_manifest(work), newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            rows.setdefault(row[1], []).append(row)
    train: list[list[str]] = []
    for label in sorted({row[2] for row in rows["train"]}):
        train += sorted(row for row in rows["train"] if row[2] == label)[:per_class]
    keep = np.sort(np.random.default_rng(seed).choice(len(rows["mnist"]), min(mnist, len(rows["mnist"])), replace=False))
    path = work / f"finetune-{per_class}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(train + rows["test"] + rows["dtd"] + [rows["mnist"][i] for i in keep])
    return path


def fine_tune(manifest: Path, out: Path, model: dict, outliers: Path | None, held: list[str], sets: list[str]) -> dict:
    from ood_ray.config import load_config
    from ood_ray.finetune.run import run_finetune

    entry = "models=[" + json.dumps(model) + "]"
    config = load_config(None, [entry, *sets], source=str(manifest), out=str(out))
    return run_finetune(config, str(outliers) if outliers else None, split="train", holdout_classes=held)


def judge(manifest: Path, out: Path, model_yaml: Path, held: list[str], alias: str) -> dict:
    """``ood-ray holdout`` with the fine-tuned model, MNIST and DTD evaluated too; metrics and ID accuracy."""
    from ood_ray.config import load_config
    from ood_ray.evaluate import evaluate
    from ood_ray.holdout import run_holdout
    from ood_ray.query import run_query

    config = load_config(str(model_yaml), AUDIT, source=str(manifest), out=str(out), overwrite=True)
    started = time.perf_counter()
    run = run_holdout(config, held, None, 0, id_split="test")
    seconds = time.perf_counter() - started
    scores = [f"score_{name}_{alias}" for _, name in SCORES]
    table = evaluate(str(out), ood_splits=[s for _, s in OOD_SETS], id_splits=["test"], scores=scores).to_pylist()
    metrics = {(r["score"], r["ood_set"]): r for r in table}
    class_names = config.models[0].class_names
    rows = run_query(str(out), f"""SELECT i.label, p.top_classes[1] AS top FROM predictions p JOIN images i USING (image_id)
                                   WHERE i.split = 'test' AND p.model = '{alias}'""").to_pydict()
    accuracy = float(np.mean([class_names[top] == label for top, label in zip(rows["top"], rows["label"])]))
    return {"id_accuracy": accuracy, "n_test": len(rows["top"]), "audit_seconds": seconds, "objects": run["objects_in"],
            "metrics": {f"{name}/{split}": {"auroc": metrics[(f"score_{key}_{alias}", split)]["auroc"],
                                            "tnr95": metrics[(f"score_{key}_{alias}", split)]["tnr_at_95tpr"]}
                        for name, key in SCORES for _, split in OOD_SETS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-finetune")
    parser.add_argument("--per-class", type=int, default=1000, help="CIFAR-10 training images per class")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the CE / OE / MixOE fine-tunes")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--head-lr", type=float, default=0.01)
    parser.add_argument("--outliers", type=int, default=5000)
    parser.add_argument("--mnist", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="the held-out classes' draw")
    parser.add_argument("--methods", nargs="*", default=["ce", "oe", "mixoe"])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args()
    work = prepare(args.work)
    if work is None:
        return 2
    from ood_ray.holdout import choose_classes

    manifest = write_benchmark_manifest(work, args.per_class, args.mnist, args.seed)
    with open(manifest, newline="") as f:
        held = choose_classes([row["label"] for row in csv.DictReader(f) if row["split"] == "train"], None, 4, args.seed)
    photos = make_outliers(work / "outliers", args.outliers, args.seed)
    print(f"held out: {held}; outliers: {args.outliers} crops of {len(photos)} ImageNet photos ({', '.join(photos)})", flush=True)

    results: dict[str, dict] = {}
    base_out = work / "baseline"
    record = fine_tune(manifest, base_out, BASE, None, held, [
        "finetune.method=ce", "finetune.layers=head", f"finetune.epochs={args.head_epochs}",
        f"finetune.learning_rate={args.head_lr}"])
    results["baseline"] = {"finetune": record, **judge(manifest, work / "judge-baseline", base_out / "model.yaml", held,
                                                         record["model"]["alias"])}
    print(f"baseline: {record['seconds']['per_epoch']:.1f} s/epoch, ID accuracy {results['baseline']['id_accuracy']:.4f}",
          flush=True)
    import yaml

    baseline_entry = yaml.safe_load((base_out / "model.yaml").read_text())["models"][0]
    for method in args.methods:
        out = work / method
        entry = {**baseline_entry, "alias": f"r20_{method}"}
        record = fine_tune(manifest, out, entry, work / "outliers" if method != "ce" else None, held, [
            f"finetune.method={method}", f"finetune.epochs={args.epochs}"])
        results[method] = {"finetune": record, **judge(manifest, work / f"judge-{method}", out / "model.yaml", held,
                                                        record["model"]["alias"])}
        print(f"{method}: {record['seconds']['per_epoch']:.1f} s/epoch, ID accuracy {results[method]['id_accuracy']:.4f}",
              flush=True)

    names = {"baseline": "baseline (head only)", "ce": "+ CE fine-tune (no outliers)", "oe": "+ OE", "mixoe": "+ MixOE"}
    print("\nAUROC / TNR95 (ID = the 6 classes of CIFAR-10 test; s/epoch = mean wall time of an epoch of training)")
    print(f"{'model':<30}{'ID acc':>8}{'s/epoch':>9}  {'score':<8}" + "".join(f"{ood:>20}" for ood, _ in OOD_SETS))
    for key, result in results.items():
        for i, (score, _) in enumerate(SCORES):
            lead = (f"{names[key]:<30}{result['id_accuracy']:>8.4f}{result['finetune']['seconds']['per_epoch']:>9.1f}"
                    if i == 0 else " " * 47)
            print(f"{lead}  {score:<8}" + "".join(
                f"{result['metrics'][f'{score}/{split}']['auroc']:>12.3f} / {result['metrics'][f'{score}/{split}']['tnr95']:.3f}"
                for _, split in OOD_SETS))
    if "mixoe" in results:
        base, mixoe = results["baseline"], results["mixoe"]
        gains = {score: mixoe["metrics"][f"{score}/holdout"]["tnr95"] - base["metrics"][f"{score}/holdout"]["tnr95"]
                 for score, _ in SCORES}
        drop = base["id_accuracy"] - mixoe["id_accuracy"]
        print("\ntarget (MixOE raises held-out TNR95 over the baseline, ID accuracy within 1 point): TNR95 change "
              + ", ".join(f"{s} {g:+.3f}" for s, g in gains.items()) + f"; ID accuracy change {-drop:+.4f} -> "
              + ("met" if gains["MSP"] > 0 and drop <= 0.01 else "NOT met"))
    print("caveat: the pretrained ResNet-20 body was trained on all 10 classes, the held-out 4 included")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"held_out": held, "outlier_photos": photos, "settings": vars(args),
                                           "results": results}, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
