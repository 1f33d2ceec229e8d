"""Throughput of the per-image pass (decode + statistics + hashes) against decode alone and DataEval.

Measured per core (one process, one thread, the same images held as bytes in memory), on
CIFAR-10 test JPEGs (32 x 32) and on real photos of at least 640 x 480 (DTD originals), all from
``../shared/data``:

- ``decode``: ``ood_ray.io.decode.decode_image`` only (Pillow decode + mode conversion);
- ``ours_stats``: ``compute_images_stats`` on the decoded arrays, in blocks of 64 as a worker
  does, with per-channel sharpness on (every statistic, per image and per channel,
  ``hash_pixels``, phash, dhash and the default D4 hash, phash_d4) -- the same work as the DataEval calls below;
- ``ours_full``: ``scan_blobs`` on blocks of 64 objects' bytes with the shipped defaults (the scan stage's settings, built alike):
  ``hash_file`` + decode + statistics, hashes and the named quality measures (per-channel
  sharpness off) -- what a worker does with a block; ``ours_full_without_crop_hashes``: the same
  without the centre hashes of ``phash_crop`` (their cost);
- ``dataeval_stats``: DataEval's ``compute_stats`` on the same decoded arrays (channels first) with
  the same families -- pixel, visual, dimension statistics, xxhash, phash, dhash and the
  flip/rotation-invariant phash_d4 -- and ``per_channel=True`` run separately as we also
  produce per-channel rows; ``set_max_processes(1)`` for one core.

Ratios: ``ours_stats`` vs ``dataeval_stats`` throughput (targets: >= 5x on photos, >= 2x at
32 x 32); ``ours_full`` time / ``decode`` time (target <= 2). Then the Ray pipeline end to end on
this machine's cores (audit of a CIFAR-10 folder), for the parallel picture.

Usage: ``python benchmarks/bench_scan.py [--cifar 2000] [--photo-repeat 3] [--json PATH]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

from ood_ray.config import load_config  # noqa: E402
from ood_ray.io.decode import decode_image  # noqa: E402
from ood_ray.scan import DEFAULT_D4_HASHES, ScanSettings, scan_blobs  # noqa: E402
from ood_ray.stats.image import compute_images_stats  # noqa: E402

BLOCK = 64  # objects per scan_blobs call; the statistics run in batches of at most scan.STATS_BUDGET_VALUES values either way
#: The scan settings of an audit with the shipped defaults (the statistics, hashes, the D4 hash and the
#: named quality measures), built by the same constructor as the scan stage's.
SETTINGS = ScanSettings.from_config(load_config(None, [], source=".", out="."))


def load_cifar(n: int) -> list[bytes]:
    files = sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))
    step = max(1, len(files) // n)
    return [f.read_bytes() for f in files[::step][:n]]


def load_photos(repeat: int) -> list[bytes]:
    from PIL import Image

    files = sorted((SHARED / "dtd" / "original").glob("*/*.jpg"))
    big = [f for f in files if (lambda s: s[0] * s[1] >= 640 * 480)(Image.open(f).size)]
    return [f.read_bytes() for f in big] * repeat


def timed(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - started


def best_of(runs: int, fn, items) -> float:
    return min(timed(fn, items) for _ in range(runs))


def dataeval_seconds(arrays: list[np.ndarray]) -> float:
    from dataeval.config import set_max_processes
    from dataeval.core import compute_stats
    from dataeval.flags import ImageStats

    set_max_processes(1)
    flags = (ImageStats.PIXEL | ImageStats.VISUAL | ImageStats.DIMENSION | ImageStats.HASH_DUPLICATES_BASIC
             | ImageStats.HASH_PHASH_D4)  # the D4 hash ood-ray computes by default
    chw = [np.moveaxis(a, -1, 0) for a in arrays]
    started = time.perf_counter()
    compute_stats(chw, stats=flags, normalize_pixel_values=True)
    compute_stats(chw, stats=ImageStats.PIXEL | ImageStats.VISUAL, per_channel=True, normalize_pixel_values=True)
    return time.perf_counter() - started


def bench_dataset(name: str, blobs: list[bytes], runs: int) -> dict:
    decoded = [decode_image(b, SETTINGS.max_pixels) for b in blobs]
    assert all(d.status == "ok" for d in decoded), name
    arrays = [d.pixels for d in decoded]
    n = len(blobs)
    t_decode = best_of(runs, lambda b: decode_image(b, SETTINGS.max_pixels), blobs)
    array_blocks = [arrays[i : i + BLOCK] for i in range(0, n, BLOCK)]
    t_stats = best_of(runs, lambda block: compute_images_stats(block, [8] * len(block), per_channel_sharpness=True,
                                                               d4_hashes=DEFAULT_D4_HASHES), array_blocks)
    blocks = [[(b, None) for b in blobs[i : i + BLOCK]] for i in range(0, n, BLOCK)]
    t_full = best_of(runs, lambda block: scan_blobs(block, SETTINGS), blocks)
    without_crop = dataclasses.replace(SETTINGS, crop_scales=())  # what the centre hashes of phash_crop cost
    t_full_no_crop = best_of(runs, lambda block: scan_blobs(block, without_crop), blocks)
    t_dataeval = min(dataeval_seconds(arrays) for _ in range(max(1, runs - 1)))
    shape = arrays[0].shape
    return {
        "dataset": name,
        "images": n,
        "example_shape": list(shape),
        "mean_megapixels": float(np.mean([a.shape[0] * a.shape[1] for a in arrays]) / 1e6),
        "images_per_s": {
            "decode": n / t_decode,
            "ours_stats": n / t_stats,
            "ours_full": n / t_full,
            "ours_full_without_crop_hashes": n / t_full_no_crop,
            "dataeval_stats": n / t_dataeval,
            "decode_then_dataeval": n / (t_decode + t_dataeval),
        },
        "ratios": {
            "ours_stats_vs_dataeval_stats": t_dataeval / t_stats,
            "ours_full_vs_decode_then_dataeval": (t_decode + t_dataeval) / t_full,
            "ours_full_time_over_decode_time": t_full / t_decode,
        },
    }


def bench_ray_pipeline(n: int) -> dict:
    """The audit end to end on this machine (local Ray, all cores) over a folder of CIFAR-10 JPEGs."""
    import shutil

    from ood_ray.config import load_config
    from ood_ray.pipeline import run_audit

    files = sorted((SHARED / "cifar10" / "test").glob("*/*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for i in range(n):  # beyond 10,000 the test set is copied again under other names
            f = files[i % len(files)]
            target = src / "test" / f.parent.name / f"{i // len(files)}_{f.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        run = run_audit(load_config(None, ["io.rows_per_block=256", "ray.progress_interval_s=30"],
                                    source=str(src), out=str(Path(tmp) / "out")))
    return {
        "images": run["objects_in"],
        "cpus": os.cpu_count(),
        "scan_seconds": run["stage_seconds"]["scan"],
        "images_per_s_scan_stage": run["images_per_second"],
        "total_seconds": run["stage_seconds"]["total_before_commit"],
        "stage_seconds": run["stage_seconds"],
    }


def print_table(results: list[dict], pipeline: dict | None) -> None:
    header = f"{'dataset':<22}{'n':>6}{'decode':>10}{'ours':>10}{'ours+dec':>10}{'no crop':>10}{'DataEval':>10}{'stats x':>9}{'e2e x':>8}{'full/dec':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        s, q = r["images_per_s"], r["ratios"]
        print(f"{r['dataset']:<22}{r['images']:>6}{s['decode']:>10.0f}{s['ours_stats']:>10.0f}{s['ours_full']:>10.0f}"
              f"{s['ours_full_without_crop_hashes']:>10.0f}{s['dataeval_stats']:>10.0f}{q['ours_stats_vs_dataeval_stats']:>9.1f}"
              f"{q['ours_full_vs_decode_then_dataeval']:>8.1f}{q['ours_full_time_over_decode_time']:>9.2f}")
    print("(images/s on one core; 'stats x' = ours/DataEval on decoded arrays; 'e2e x' = ours incl. decode / decode+DataEval;"
          " 'full/dec' = time of our full pass / decode alone; 'no crop' = ours+dec without phash_crop's centre hashes)")
    if pipeline:
        print(f"Ray pipeline, {pipeline['cpus']} CPUs, {pipeline['images']} CIFAR-10 JPEGs: "
              f"{pipeline['images_per_s_scan_stage']:.0f} images/s in the scan stage, {pipeline['total_seconds']:.1f} s in all")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=int, default=2000)
    parser.add_argument("--photo-repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pipeline-images", type=int, default=5000)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "scan.json"))
    args = parser.parse_args()
    if prepare() is None:
        return 2
    results = [
        bench_dataset("cifar10 32x32 jpeg", load_cifar(args.cifar), args.runs),
        bench_dataset("dtd photos >=640x480", load_photos(args.photo_repeat), args.runs),
    ]
    pipeline = bench_ray_pipeline(args.pipeline_images) if args.pipeline_images else None
    print_table(results, pipeline)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"per_core": results, "ray_pipeline": pipeline}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
