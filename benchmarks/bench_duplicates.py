"""Near-duplicate recall per kind of copy and false pairs: ood-ray against DataEval, CleanVision,
imagededup and fastdup on the same files.

The set is built from ``../shared/data`` before any tool runs: distinct images (CIFAR-10 test JPEGs,
DTD textures at 32 px and as original photos, ImageNet samples) and, for a seeded choice of
``--copied`` of them, one copy per transform made with Pillow: JPEG quality 50, half size, double
size, a text watermark, grayscale, horizontal and vertical flip, rotations by 90 and 180 degrees, a
5% crop (each side), +30% brightness. The ground truth (which file is a copy of which) is written
to ``truth.json`` first. DTD's ``original/`` photos are also in ``resized32/`` (squashed to 32 x 32):
a photo and its 32-px version are one image (a real pair of copies nobody here made), so they
share an origin; so do distinct files that show one picture (16 x 16 grayscale thumbnails within 2
gray levels on average: DTD holds a few such repeats), and the pairs in ``SAME_PICTURE_BY_EYE``:
one photograph at two crops, found among the tools' false pairs and checked side by side.

A tool's predicted pairs are the pairs of files in one of its duplicate groups (exact or near;
ood-ray's embedding groups are not counted: no model runs here). Recall of a transform = share of
its (original, copy) pairs predicted; a false pair = a predicted pair of files made from two
different distinct images.

Peers run in their own virtualenvs (``--peers-python``: cleanvision, imagededup, dataeval;
``--fastdup-python``), DataEval also in this one when installed.

Usage: ``python benchmarks/bench_duplicates.py [--work DIR] [--copied 300] [--peers-python P]
[--fastdup-python P] [--json PATH]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

TRANSFORMS = ("jpeg_q50", "half_size", "double_size", "watermark", "grayscale", "flip_h", "flip_v", "rot90",
              "rot180", "crop_5pct", "brighter")


def transform(image, name: str):
    from PIL import Image, ImageDraw, ImageEnhance

    w, h = image.size
    if name == "jpeg_q50":
        return image  # re-encoded at quality 50 when saved
    if name == "half_size":
        return image.resize((max(9, w // 2), max(9, h // 2)), Image.Resampling.BICUBIC)
    if name == "double_size":
        return image.resize((w * 2, h * 2), Image.Resampling.BICUBIC)
    if name == "watermark":
        out = image.copy()
        draw = ImageDraw.Draw(out)
        draw.text((max(1, w // 20), max(1, h - h // 6)), "(c) ood", fill=(255, 255, 255))
        return out
    if name == "grayscale":
        return image.convert("L").convert("RGB")
    if name == "flip_h":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if name == "flip_v":
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if name == "rot90":
        return image.transpose(Image.Transpose.ROTATE_90)
    if name == "rot180":
        return image.transpose(Image.Transpose.ROTATE_180)
    if name == "crop_5pct":
        dx, dy = max(1, round(w * 0.05)), max(1, round(h * 0.05))
        return image.crop((dx, dy, w - dx, h - dy))
    if name == "brighter":
        return ImageEnhance.Brightness(image).enhance(1.3)
    raise ValueError(name)


#: Distinct DTD files that show one photograph at another crop or scale, which the thumbnail rule of
#: :func:`same_pictures` cannot see; each pair was looked at side by side (2026-12-06). They count
#: as one image for every tool.
SAME_PICTURE_BY_EYE = [
    (("cobwebbed", "cobwebbed_0049"), ("cobwebbed", "cobwebbed_0050")),  # one spider-web photo, two crops and scales
    (("chequered", "chequered_0101"), ("chequered", "chequered_0174")),  # one checkerboard photo, shifted a few pixels
]


def same_pictures(sources: list[Path], max_difference: float = 2.0) -> list[tuple[int, int]]:
    """Pairs of source files that show one picture: mean absolute difference of their 16 x 16
    grayscale thumbnails (bilinear, aspect not kept) at most ``max_difference`` gray levels."""
    import numpy as np
    from PIL import Image

    thumbs = np.stack([np.asarray(Image.open(p).convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32).ravel()
                       for p in sources])
    found = []
    for start in range(0, len(thumbs), 256):
        block = np.abs(thumbs[start:start + 256, None, :] - thumbs[None, :, :]).mean(axis=2)
        for a, b in zip(*np.nonzero(block <= max_difference)):
            if start + a < b:
                found.append((int(start + a), int(b)))
    return found


def build_set(root: Path, copied: int, seed: int) -> dict:
    """Write the distinct images and the copies under ``root/images``; return the truth."""
    from PIL import Image

    sources = [*sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))[::10],  # 1,000
               *sorted((SHARED / "dtd" / "resized32").glob("*/*.png"))[::3],  # 400 textures at 32 px
               *sorted((SHARED / "dtd" / "original").glob("*/*.jpg")),  # 100 texture photos
               *sorted((SHARED / "foolbox_samples" / "imagenet_20").glob("*.jpg"))]
    images = root / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    origin: dict[str, int] = {}
    names = []
    first_of: dict[tuple, int] = {}
    for i, source in enumerate(sources):
        name = f"{i:05d}_{source.parent.name}{source.suffix.lower()}"
        shutil.copyfile(source, images / name)
        dtd = source.parent.parent.name in ("resized32", "original") and source.parent.parent.parent.name == "dtd"
        origin[name] = first_of.setdefault((source.parent.name, source.stem) if dtd else ("", i), i)
        names.append(name)
    by_eye = [(names.index(a), names.index(b)) for a, b in (
        tuple(next((n for n, src in zip(names, sources) if (src.parent.name, src.stem) == key), None) for key in pair)
        for pair in SAME_PICTURE_BY_EYE) if a is not None and b is not None]
    for i, j in [*same_pictures(sources), *by_eye]:  # distinct files that are one picture (DTD holds a few)
        keep, drop = sorted((origin[names[i]], origin[names[j]]))
        for name, o in origin.items():
            if o == drop:
                origin[name] = keep
    chosen = sorted(random.Random(seed).sample(range(len(sources)), copied))
    planted = {t: [] for t in TRANSFORMS}
    for i in chosen:
        image = Image.open(sources[i]).convert("RGB")
        for t in TRANSFORMS:
            name = f"{i:05d}_{t}.png" if t != "jpeg_q50" else f"{i:05d}_{t}.jpg"
            copy = transform(image, t)
            if t == "jpeg_q50":
                copy.save(images / name, quality=50)
            else:
                copy.save(images / name)
            origin[name] = origin[names[i]]
            planted[t].append([names[i], name])
    truth = {"origin": origin, "planted": planted, "distinct": len(set(origin.values())), "files": len(origin)}
    (root / "truth.json").write_text(json.dumps(truth))
    return truth


def score(pairs: set[tuple[str, str]], truth: dict) -> dict:
    origin = truth["origin"]
    recall = {t: sum(tuple(sorted(p)) in pairs for p in planted) / len(planted) for t, planted in truth["planted"].items()}
    false = sum(1 for a, b in pairs if origin[a] != origin[b])
    return {"recall": recall, "false_pairs": false, "pairs": len(pairs)}


def pairs_of_groups(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for group in groups for p in itertools.combinations(sorted(set(group)), 2)}


def ood_ray_groups(images: Path, out: Path, overrides: list[str] = ()) -> tuple[list[list[str]], float]:
    started = time.perf_counter()
    extra = [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run([sys.executable, "-m", "ood_ray", "audit", str(images), "--out", str(out), "--overwrite",
                           "--set", "drift.enabled=false", *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    from ood_ray.query import run_query

    rows = run_query(str(out), "SELECT d.group_id, i.uri FROM duplicates d JOIN images i USING (image_id) "
                                "WHERE d.method <> 'embedding'").to_pylist()
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row["group_id"], []).append(Path(row["uri"]).name)
    return list(groups.values()), seconds


PEER_SCRIPTS = {
    "DataEval (D4 hashes)": r"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from dataeval.flags import ImageStats
from dataeval.quality import Duplicates
files = sorted(Path(sys.argv[1]).iterdir())
images = [np.moveaxis(np.asarray(Image.open(f).convert("RGB")), -1, 0) for f in files]
result = Duplicates(ImageStats.HASH_DUPLICATES_BASIC | ImageStats.HASH_DUPLICATES_D4).evaluate(images)
groups = [[files[int(i)].name for i in row["item_indices"]] for row in result.data().iter_rows(named=True)
          if row["level"] == "item"]
print(json.dumps(groups))
""",
    "CleanVision": r"""
import json, sys
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1], verbose=False)
lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False)
groups = [[p.rsplit("/", 1)[-1] for p in s] for key in ("exact_duplicates", "near_duplicates")
          for s in lab.info[key]["sets"]]
print(json.dumps(groups))
""",
    "imagededup (PHash, default)": r"""
import json, sys
from imagededup.methods import PHash
found = PHash(verbose=False).find_duplicates(image_dir=sys.argv[1])
print(json.dumps([[key, *values] for key, values in found.items() if values]))
""",
    "fastdup (default)": r"""
import json, os, sys
os.environ.setdefault("SENTRY_OPT_OUT", "1")
import fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(overwrite=True, verbose=False)
pairs = fd.similarity()
cut = fd.config.get("threshold", 0.9) if hasattr(fd, "config") and isinstance(fd.config, dict) else 0.9
groups = [[os.path.basename(a), os.path.basename(b)] for a, b, d in zip(pairs["filename_from"], pairs["filename_to"], pairs["distance"]) if d >= 0.96]
print(json.dumps(groups))
""",
}


def peer_groups(name: str, python: str, images: Path, work: Path) -> tuple[list[list[str]], float]:
    started = time.perf_counter()
    done = subprocess.run([python, "-c", PEER_SCRIPTS[name], str(images), str(work / ("fd-" + str(os.getpid())))],
                          capture_output=True, text=True, env={**os.environ, "SENTRY_OPT_OUT": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/ood-ray-duplicates")
    parser.add_argument("--copied", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON", ""))
    parser.add_argument("--fastdup-python", default=os.environ.get("FASTDUP_PYTHON", ""))
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "duplicates.json"))
    args = parser.parse_args()
    work = prepare(args.work)
    if work is None:
        return 2
    truth = build_set(work, args.copied, args.seed)
    images = work / "images"
    print(f"{truth['files']:,} files: {truth['distinct']:,} distinct images, {args.copied} copied {len(TRANSFORMS)} ways")
    results = {}
    groups, seconds = ood_ray_groups(images, work / "out")
    results["ood-ray"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    groups, seconds = ood_ray_groups(images, work / "out-no-crop", ["dedup.near_methods=[phash, dhash, phash_d4]"])
    results["ood-ray, no crop hashes"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    groups, seconds = ood_ray_groups(images, work / "out-no-second", ["dedup.verify_hash_distance=null",
                                                                      "dedup.verify_crop_hash_distance=null"])
    results["ood-ray, no second-hash check"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    groups, seconds = ood_ray_groups(images, work / "out-no-pixels", ["dedup.verify_pixel_correlation=null"])
    results["ood-ray, no pixel check"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    groups, seconds = ood_ray_groups(images, work / "out-no-colour", ["dedup.verify_colour_difference=null"])
    results["ood-ray, no colour term"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    groups, seconds = ood_ray_groups(images, work / "out-unverified", ["dedup.verify=false"])
    results["ood-ray, dedup.verify=false"] = {**score(pairs_of_groups(groups), truth), "seconds": round(seconds, 1)}
    peers = []
    if not args.skip_peers:
        if args.peers_python:
            peers += [(name, args.peers_python) for name in ("DataEval (D4 hashes)", "CleanVision", "imagededup (PHash, default)")]
        if args.fastdup_python:
            peers.append(("fastdup (default)", args.fastdup_python))
    for name, python in peers:
        try:
            found, seconds = peer_groups(name, python, images, work)
        except Exception as exc:  # noqa: BLE001 - a peer failing is reported, the others still run
            results[name] = {"error": str(exc)[-300:]}
            continue
        results[name] = {**score(pairs_of_groups(found), truth), "seconds": round(seconds, 1)}
    print("\n| tool | " + " | ".join(TRANSFORMS) + " | false pairs | pairs | s |")
    print("|---" * (len(TRANSFORMS) + 4) + "|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | error: {r['error'][:80]} |")
            continue
        print(f"| {name} | " + " | ".join(f"{r['recall'][t]:.2f}" for t in TRANSFORMS)
              + f" | {r['false_pairs']:,} | {r['pairs']:,} | {r['seconds']} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"files": truth["files"], "distinct": truth["distinct"], "copied": args.copied,
                                           "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
