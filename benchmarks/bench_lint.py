"""Lint: the share of ordinary images flagged and the planted extremes caught, ood-ray's lint
settings and named quality issues against DataEval's ``Outliers`` and CleanVision's ``find_issues``
on the same files.

Ordinary: the 10,000 CIFAR-10 test JPEGs. Planted: 50 extremes made from other CIFAR-10 images
with Pillow (5 each): black, white, very dark (x0.15), very bright (x4, clipped), blurred (Gaussian,
radius 3), uniform noise, a flat grey with one stripe, a 32 x 4 strip, 128 x 128 upscale, a
single-colour image with JPEG noise. A tool catches a planted image when it flags it on any
statistic; the ordinary share is the share of the 10,000 with any flag. ood-ray's relative lint
(table ``lint``) and its named quality issues (``is_<issue>`` in ``images``) are counted apart and
together; a second table gives each named issue's ordinary and planted counts; a third the share of
ordinary images the relative lint flags on three more real sets with nothing planted (10,000
CIFAR-10 training JPEGs, the 10,000 MNIST test digits, 1,200 DTD textures at 32 px), against
DataEval's, so that the defaults are not tuned to one set.

Usage: ``python benchmarks/bench_lint.py [--work DIR] [--json PATH] [--no-dataeval] [--no-cleanvision]
[--no-other-sets]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402
from ood_ray.lint.linter import DEFAULT_LINT_METRICS  # noqa: E402

KINDS = ("black", "white", "very_dark", "very_bright", "blurred", "noise", "flat_stripe", "strip_32x4", "upscaled_128",
         "flat_colour")
#: The statistics linted before ``edge_contrast`` and ``noise_ratio``: ``edge_p99`` in their place.
_BEFORE = "[" + ", ".join([*(m for m in DEFAULT_LINT_METRICS if m not in ("edge_contrast", "noise_ratio")),
                           "edge_p99"]) + "]"
SETTINGS = {"default (adaptive 3.5)": [],
            "edge_p99, no relative detail (before)": ["lint.log_metrics=[edge_p99]", f"lint.metrics={_BEFORE}"],
            "zscore 3": ["lint.method=zscore", "lint.threshold=3"],
            "modzscore 3.5": ["lint.method=modzscore", "lint.threshold=3.5"],
            "iqr 3": ["lint.method=iqr", "lint.threshold=3"]}


def planted_image(kind: str, source, rng):
    from PIL import Image, ImageEnhance, ImageFilter

    image = Image.open(source).convert("RGB")
    if kind == "black":
        return Image.new("RGB", image.size, (0, 0, 0))
    if kind == "white":
        return Image.new("RGB", image.size, (255, 255, 255))
    if kind == "very_dark":
        return ImageEnhance.Brightness(image).enhance(0.15)
    if kind == "very_bright":
        return ImageEnhance.Brightness(image).enhance(4.0)
    if kind == "blurred":
        return image.filter(ImageFilter.GaussianBlur(3))
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    if kind == "flat_stripe":
        array = np.full((32, 32, 3), 128, np.uint8)
        array[14:18] = 255
        return Image.fromarray(array)
    if kind == "strip_32x4":
        return image.resize((32, 4))
    if kind == "upscaled_128":
        return image.resize((128, 128), Image.Resampling.BICUBIC)
    if kind == "flat_colour":
        return Image.new("RGB", image.size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    raise ValueError(kind)


def build(work: Path) -> tuple[Path, list[str]]:
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    ordinary = sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))
    (images / "ordinary").mkdir(parents=True)
    for path in ordinary:
        shutil.copyfile(path, images / "ordinary" / f"{path.parent.name}_{path.name}")
    rng = np.random.default_rng(0)
    donors = sorted(SHARED.joinpath("cifar10", "test").glob("*/*.jpg"))[::97]
    (images / "planted").mkdir()
    planted = []
    for k, kind in enumerate(KINDS):
        for j in range(5):
            name = f"{kind}_{j}.png"
            planted_image(kind, donors[(5 * k + j) % len(donors)], rng).save(images / "planted" / name)
            planted.append(name)
    return images, planted


#: Ordinary sets with nothing planted, for the share flagged beyond the benchmark's own set (:func:`other_sets`).
OTHER_SETS = ("cifar10-train-10k", "mnist-test", "dtd-32px")


def other_sets(work: Path) -> dict[str, Path]:
    """The first 1,000 CIFAR-10 training JPEGs of each class (from the zip), the 10,000 MNIST test
    digits and the 1,200 DTD textures at 32 x 32 pixels, each in its own folder under ``work``."""
    import zipfile

    folders = {name: work / "other" / name for name in OTHER_SETS}
    target = folders["cifar10-train-10k"]
    if not target.exists():
        with zipfile.ZipFile(SHARED / "cifar10" / "train_jpg.zip") as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
            taken: dict[str, int] = {}
            for name in names:
                label = Path(name).parent.name
                if taken.get(label, 0) < 1000:
                    taken[label] = taken.get(label, 0) + 1
                    (target / label).mkdir(parents=True, exist_ok=True)
                    (target / label / Path(name).name).write_bytes(archive.read(name))
    for name, source in (("mnist-test", SHARED / "mnist" / "test"), ("dtd-32px", SHARED / "dtd" / "resized32")):
        if not folders[name].exists():
            shutil.copytree(source, folders[name])
    return folders


def ood_ray_flags(images: Path, out: Path, overrides: list[str]) -> tuple[dict[str, set[str]], float]:
    """``{"lint": files, "issues": files, "issue:<name>": files}`` flagged by one audit, and its seconds."""
    started = time.perf_counter()
    args = [sys.executable, "-m", "ood_ray", "audit", str(images), "--out", str(out), "--overwrite",
            "--set", "dedup.enabled=false", "--set", "drift.enabled=false"]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    seconds = time.perf_counter() - started
    from ood_ray.lint.issues import ISSUES
    from ood_ray.query import run_query

    def files(sql: str) -> set[str]:
        return {Path(u).parent.name + "/" + Path(u).name for u in run_query(str(out), sql).column(0).to_pylist()}

    found = {"lint": files("SELECT DISTINCT i.uri FROM lint l JOIN images i USING (image_id)")}
    for name, issue in ISSUES.items():
        found[f"issue:{name}"] = files(f"SELECT uri FROM images WHERE {issue.flag_column}")
    found["issues"] = set().union(*(v for k, v in found.items() if k.startswith("issue:")))
    return found, seconds


def cleanvision_flags(images: Path) -> tuple[dict[str, set[str]], float]:
    """CleanVision's image-property issues (``find_issues()`` defaults without its duplicate checks)."""
    from cleanvision import Imagelab

    files = sorted(str(f) for f in images.rglob("*.*"))
    started = time.perf_counter()
    lab = Imagelab(filepaths=files)
    lab.find_issues({name: {} for name in ("dark", "light", "blurry", "low_information", "odd_aspect_ratio",
                                           "odd_size", "grayscale")}, verbose=False)
    seconds = time.perf_counter() - started
    table = lab.issues
    found = {}
    for column in table.columns:
        if column.startswith("is_") and column.endswith("_issue"):
            name = column[3:-6]
            found[f"issue:{name}"] = {f"{Path(p).parent.name}/{Path(p).name}" for p in table.index[table[column]]}
    found["issues"] = set().union(*found.values())
    return found, seconds


def dataeval_flags(images: Path) -> tuple[set[str], float]:
    from PIL import Image

    from dataeval.quality import Outliers

    files = sorted(images.rglob("*.*"))
    started = time.perf_counter()
    arrays = [np.moveaxis(np.asarray(Image.open(f).convert("RGB")), -1, 0) for f in files]
    result = Outliers().evaluate(arrays)
    data = result.data() if hasattr(result, "data") else result.issues
    column = "item_index" if "item_index" in data.columns else data.columns[0]
    indices = set(int(i) for i in data[column].to_list())
    return {f"{files[i].parent.name}/{files[i].name}" for i in indices}, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-lint")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "lint.json"))
    parser.add_argument("--no-dataeval", action="store_true")
    parser.add_argument("--no-cleanvision", action="store_true")
    parser.add_argument("--no-other-sets", action="store_true",
                        help="skip the share flagged on CIFAR-10 train, MNIST and DTD at 32 px")
    args = parser.parse_args()
    work = prepare(args.work)
    if work is None:
        return 2
    images, planted = build(work)
    ordinary = len(list((images / "ordinary").iterdir()))
    results = {}
    for name, overrides in SETTINGS.items():
        found, seconds = ood_ray_flags(images, work / "out", overrides)
        results[f"ood-ray {name}"] = (found, seconds)
    if not args.no_dataeval:
        flagged, seconds = dataeval_flags(images)
        results["DataEval Outliers (default)"] = ({"lint": flagged}, seconds)
    if not args.no_cleanvision:
        results["CleanVision find_issues (default)"] = cleanvision_flags(images)

    def counted(flagged: set[str]) -> dict:
        normal = sum(1 for f in flagged if f.startswith("ordinary/"))
        caught = [p for p in planted if f"planted/{p}" in flagged]
        return {"ordinary_flagged": normal, "share": normal / ordinary, "planted_caught": len(caught),
                "missed": sorted(set(planted) - set(caught))}

    table = {}
    print(f"\n{ordinary:,} ordinary CIFAR-10 test images, {len(planted)} planted extremes\n")
    print("| tool | flags from | ordinary flagged | share | planted caught | missed | s |")
    print("|---|---|---|---|---|---|---|")
    for name, (found, seconds) in results.items():
        kinds = {"relative lint": found.get("lint"), "named issues": found.get("issues")}
        if kinds["relative lint"] is not None and kinds["named issues"] is not None:
            kinds["either"] = kinds["relative lint"] | kinds["named issues"]
        entry = {"seconds": round(seconds, 1)}
        for kind, flagged in kinds.items():
            if flagged is None:
                continue
            entry[kind] = row = counted(flagged)
            missed = row["missed"]
            print(f"| {name} | {kind} | {row['ordinary_flagged']:,} | {row['share']:.2%} | "
                  f"{row['planted_caught']}/{len(planted)} | {', '.join(missed[:6])}{' ...' if len(missed) > 6 else ''} "
                  f"| {seconds:.1f} |")
        entry["issues_by_name"] = {k[6:]: counted(v) for k, v in found.items() if k.startswith("issue:")}
        table[name] = entry
    print("\nNamed issues, one by one (ordinary flagged / planted caught):\n")
    tools = [n for n in table if table[n]["issues_by_name"]]
    names = sorted({issue for n in tools for issue in table[n]["issues_by_name"]})
    print("| issue | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    for issue in names:
        cells = []
        for n in tools:
            row = table[n]["issues_by_name"].get(issue)
            cells.append("-" if row is None else f"{row['ordinary_flagged']} / {row['planted_caught']}")
        print(f"| {issue} | " + " | ".join(cells) + " |")
    others = {}
    if not args.no_other_sets:
        print("\nOther ordinary sets, nothing planted (share of the images the relative lint flags):\n")
        settings = list(SETTINGS.items())[:2]
        print("| set | images | " + " | ".join(f"ood-ray {n}" for n, _ in settings)
              + ("" if args.no_dataeval else " | DataEval Outliers") + " |")
        print("|---|---|" + "---|" * (len(settings) + (0 if args.no_dataeval else 1)))
        for name, folder in other_sets(work).items():
            count = sum(1 for p in folder.rglob("*") if p.is_file())
            shares = {}
            for setting, overrides in settings:
                found, _ = ood_ray_flags(folder, work / "out-other", overrides)
                shares[f"ood-ray {setting}"] = len(found["lint"]) / count
            if not args.no_dataeval:
                shares["DataEval Outliers (default)"] = len(dataeval_flags(folder)[0]) / count
            others[name] = {"images": count, "share_flagged": shares}
            print(f"| {name} | {count:,} | " + " | ".join(f"{v:.2%}" for v in shares.values()) + " |")
    Path(args.json).write_text(json.dumps({"ordinary": ordinary, "planted": len(planted), "results": table,
                                           "other_sets": others}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
