"""Lint: the share of ordinary images flagged and the planted extremes caught, ood-ray's lint
settings against DataEval's ``Outliers`` on the same files.

Ordinary: the 10,000 CIFAR-10 test JPEGs. Planted: 50 extremes made from other CIFAR-10 images
with Pillow (5 each): black, white, very dark (x0.15), very bright (x4, clipped), blurred (Gaussian,
radius 3), uniform noise, a flat grey with one stripe, a 32 x 4 strip, 128 x 128 upscale, a
single-colour image with JPEG noise. A tool catches a planted image when it flags it on any
statistic; the ordinary share is the share of the 10,000 with any flag.

Usage: ``python benchmarks/bench_lint.py [--work DIR] [--set key=value ...] [--json PATH]``
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

KINDS = ("black", "white", "very_dark", "very_bright", "blurred", "noise", "flat_stripe", "strip_32x4", "upscaled_128",
         "flat_colour")
SETTINGS = {"default": [], "zscore 3 (before)": ["lint.method=zscore", "lint.threshold=3"],
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


def ood_ray_flags(images: Path, out: Path, overrides: list[str]) -> tuple[set[str], float]:
    started = time.perf_counter()
    args = [sys.executable, "-m", "ood_ray", "audit", str(images), "--out", str(out), "--overwrite",
            "--set", "dedup.enabled=false", "--set", "drift.enabled=false"]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    seconds = time.perf_counter() - started
    from ood_ray.query import run_query

    uris = run_query(str(out), "SELECT DISTINCT i.uri FROM lint l JOIN images i USING (image_id)").column(0).to_pylist()
    return {Path(u).parent.name + "/" + Path(u).name for u in uris}, seconds


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
    args = parser.parse_args()
    work = prepare(args.work)
    if work is None:
        return 2
    images, planted = build(work)
    ordinary = len(list((images / "ordinary").iterdir()))
    results = {}
    for name, overrides in SETTINGS.items():
        flagged, seconds = ood_ray_flags(images, work / "out", overrides)
        results[f"ood-ray {name}"] = (flagged, seconds)
    if not args.no_dataeval:
        results["DataEval Outliers (default)"] = dataeval_flags(images)
    table = {}
    print(f"\n{ordinary:,} ordinary CIFAR-10 test images, {len(planted)} planted extremes\n")
    print("| tool | ordinary flagged | share | planted caught | missed | s |")
    print("|---|---|---|---|---|---|")
    for name, (flagged, seconds) in results.items():
        normal = sum(1 for f in flagged if f.startswith("ordinary/"))
        caught = [p for p in planted if f"planted/{p}" in flagged]
        missed = sorted(set(planted) - set(caught))
        table[name] = {"ordinary_flagged": normal, "share": normal / ordinary, "planted_caught": len(caught),
                       "missed": missed, "seconds": round(seconds, 1)}
        print(f"| {name} | {normal:,} | {normal / ordinary:.2%} | {len(caught)}/{len(planted)} | "
              f"{', '.join(missed[:6])}{' ...' if len(missed) > 6 else ''} | {seconds:.1f} |")
    Path(args.json).write_text(json.dumps({"ordinary": ordinary, "planted": len(planted), "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
