"""Does the decode side keep a GPU embedding actor fed? The scan's real decode path against the
embedding actor's real GPU path, on one machine, with the actor's own idle clock.

- ``decode``: :func:`ood_ray.scan.scan_blobs` (fetch-less: the JPEG bytes in memory; decode, every
  statistic and hash, the named quality issues, and the model's resized input column -- what a scan
  task does per object) in ``P`` worker processes, ``P`` = 1 and all cores: images/s.
- ``embed``: :class:`ood_ray.embed.actor.EmbedActor` on CUDA (pinned host memory, non-blocking
  copies) on those input columns, fed directly: images/s per precision.
- ``fed``: the ``P`` decode processes produce blocks into a queue (as the scan tasks feed the actor
  pool) and one actor consumes them as they come; its busy share = busy / (busy + idle) from the
  actor's own ``_embed_seconds`` and ``_embed_idle_seconds`` (the numbers an audit reports in
  ``run.json``), after its first block.

Ray itself is not used (so that it runs where Ray cannot be installed); the audit's Ray Data
pipeline adds its own object-store hops. Images: generated 640 x 480 JPEG photos (smooth colour
fields, shapes, grain), quality 90. Prints a table and writes ``benchmarks/results/gpu_feed.json``.

Usage: ``python benchmarks/bench_gpu_feed.py [--images 4096] [--model resnet50] [--block 256]
[--allow-cpu]``
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_jpegs(n: int, width: int, height: int, seed: int = 0, distinct: int = 64) -> list[bytes]:
    """``n`` JPEG photos (``distinct`` generated ones, repeated: decode cost does not depend on it)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(distinct):
        base = rng.random((height // 16, width // 16, 3))
        image = Image.fromarray((base * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
        array = np.asarray(image).astype(np.int16)
        y, x = np.mgrid[:height, :width]
        for _ in range(4):
            cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(10, height // 3)
            array[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        array = np.clip(array + rng.normal(0, 6, array.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).filter(ImageFilter.GaussianBlur(0.6)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return [out[i % distinct] for i in range(n)]


def scan_settings(model: str):
    from ood_ray.config import ModelConfig
    from ood_ray.embed.models import inspect_models
    from ood_ray.embed.preprocess import preprocessing_key
    from ood_ray.lint.issues import ABSOLUTE_ISSUES, ISSUES
    from ood_ray.scan import ScanSettings

    info = inspect_models([ModelConfig(name=model)])[0]
    settings = ScanSettings(max_pixels=178956970, max_file_bytes=1 << 30, fetch_threads=1, per_channel_sharpness=False,
                            model_inputs=((preprocessing_key(info.data_config), info.data_config),),
                            quality_thresholds=tuple((n, ISSUES[n].threshold) for n in ABSOLUTE_ISSUES))
    return info, settings


def _one_thread() -> None:
    """A worker as Ray starts one for a 1-CPU task: one torch thread (the BLAS/OpenMP ones: the
    environment ``main`` sets before spawning)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _decode_block(args):
    """One scan task's work on a block of JPEG bytes: the model input column as a pyarrow table."""
    import pyarrow as pa

    from ood_ray.scan import scan_blobs

    blobs, ids, settings = args
    columns = scan_blobs([(b, None) for b in blobs], settings)
    name = settings.input_columns()[0][0]
    return pa.table({"image_id": ids, name: pa.array(columns.inputs[name], pa.binary())})


def _blocks(jpegs: list[bytes], block: int, settings):
    return [(jpegs[i:i + block], [str(i + k) for k in range(len(jpegs[i:i + block]))], settings)
            for i in range(0, len(jpegs), block)]


def decode_rate(jpegs: list[bytes], block: int, settings, processes: int) -> float:
    jpegs = jpegs[: block * processes * 2]  # two blocks per process
    context = mp.get_context("spawn")
    with context.Pool(processes, initializer=_one_thread) as pool:
        pool.map(_decode_block, _blocks(jpegs[: block * processes], block, settings))  # warm-up: imports
        started = time.perf_counter()
        pool.map(_decode_block, _blocks(jpegs, block, settings))
        return len(jpegs) / (time.perf_counter() - started)


def embed_rate(actor, tables, cuda: bool) -> float:
    import torch

    actor(tables[0])
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for table in tables:
        actor(table)
    if cuda:
        torch.cuda.synchronize()
    return sum(t.num_rows for t in tables) / (time.perf_counter() - started)


def fed_share(actor, jpegs: list[bytes], block: int, settings, processes: int) -> dict:
    """The actor consuming blocks as ``processes`` decode workers finish them: its busy share."""
    from ood_ray.columns import EMBED_IDLE_SECONDS, EMBED_SECONDS

    context = mp.get_context("spawn")
    busy = idle = 0.0
    rows = 0
    with context.Pool(processes, initializer=_one_thread) as pool:
        pool.map(_decode_block, _blocks(jpegs[: block * processes], block, settings))  # workers warm
        started = time.perf_counter()
        for k, table in enumerate(pool.imap_unordered(_decode_block, _blocks(jpegs, block, settings))):
            out = actor(table)
            rows += table.num_rows
            if k == 0:
                continue  # the first block's idle is the pipeline's start, not starvation
            busy += float(out.column(EMBED_SECONDS)[0].as_py())
            idle += float(out.column(EMBED_IDLE_SECONDS)[0].as_py())
        seconds = time.perf_counter() - started
    return {"busy_share": round(busy / (busy + idle), 4) if busy + idle else None, "images_per_s": round(rows / seconds, 1),
            "busy_s": round(busy, 2), "idle_s": round(idle, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "gpu_feed.json"))
    args = parser.parse_args()
    import torch

    from ood_ray.embed.actor import EmbedActor, EmbedSettings

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device here: nothing measured (--allow-cpu checks the script on the CPU)")
        return 2
    if not cuda:
        args.images, args.model, args.block = 64, "test_resnet", 16
    cores = os.cpu_count() or 1
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the spawned workers
        os.environ[name] = "1"
    info, settings = scan_settings(args.model)
    jpegs = make_jpegs(args.images, 640, 480)
    results: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cores": cores, "model": args.model,
                     "images": args.images, "block": args.block, "decode": {}, "embed": {}, "fed": {}}
    for processes in sorted({1, cores}):
        results["decode"][processes] = round(decode_rate(jpegs, args.block, settings, processes), 1)
        print(f"decode, {processes} processes: {results['decode'][processes]} images/s", flush=True)
    tables = [_decode_block(b) for b in _blocks(jpegs[: args.block * 4], args.block, settings)]
    actors = {}
    for precision in ("fp32", "fp16", "bf16") if cuda else ("fp32",):
        embed = EmbedSettings(top_k=5, max_full_probabilities=0, num_cpus=1, num_gpus=1 if cuda else 0, precision=precision)
        actors[precision] = EmbedActor([info], embed)
        results["embed"][precision] = round(embed_rate(actors[precision], tables, cuda), 1)
        print(f"embed {precision}: {results['embed'][precision]} images/s", flush=True)
    fed_precision = "fp16" if cuda else "fp32"
    for processes in sorted({max(1, cores // 2), cores}):
        results["fed"][processes] = fed_share(actors[fed_precision], jpegs, args.block, settings, processes)
        print(f"fed by {processes} processes: {results['fed'][processes]}", flush=True)
    print(f"\n{results['device']}, {cores} cores, {args.model}, {args.images} JPEGs 640 x 480, blocks of {args.block}\n")
    print("| step | workers | images/s |\n|---|---|---|")
    for processes, rate in results["decode"].items():
        print(f"| decode + statistics + model input (the scan) | {processes} processes | {rate:,.1f} |")
    for precision, rate in results["embed"].items():
        print(f"| embed ({precision}, fed directly) | 1 actor | {rate:,.1f} |")
    for processes, r in results["fed"].items():
        print(f"| scan feeding the actor ({fed_precision}) | {processes} processes | {r['images_per_s']:,.1f} "
              f"(actor busy {r['busy_share']:.0%}) |")
    per_core = results["decode"][1]
    print(f"\ncores to keep one {fed_precision} actor busy: {results['embed'][fed_precision] / per_core:.1f} "
          f"(per-core scan rate {per_core:,.1f} images/s)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
