"""GPU readiness in one command: the embedding actor on CUDA in float32 and mixed precision, and the
autoencoder trained with ``use_gpu``, against the same work on the CPU, in the same run.

- ``embed``: :class:`ood_ray.embed.actor.EmbedActor` (what the audit's actor pool runs) on ``N``
  random 224 px images per model (``resnet18``, ``resnet50``, timm's random initialisation --
  throughput does not depend on the weights), batches of ``--batch``, warmed up, best of
  ``--repeats``; per precision (``fp32``, ``fp16``, ``bf16``: ``embed.precision``) the images/s
  and the cosine similarity of each image's embedding to the float32 one (min and mean): the
  effect of mixed precision on the embeddings. Then the same through Ray Data with
  ``embed.num_gpus_per_actor=1`` (an actor pool of one GPU actor), end to end.
- ``autoencoder``: :func:`ood_ray.autoencoder.train.train_autoencoder` on 4,096 images, 2 epochs,
  ``use_gpu`` false and true: seconds and final loss.

Without CUDA it says so and exits 2 (``--allow-cpu`` runs everything on the CPU with small sizes, to
check the script itself). Prints a table and writes ``benchmarks/results/gpu.json``.

Usage: ``python benchmarks/bench_gpu.py [--images 2048] [--batch 128] [--allow-cpu]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ood_ray.columns import EMBEDDING_PREFIX  # noqa: E402
from ood_ray.config import ModelConfig, load_config  # noqa: E402
from ood_ray.embed.actor import EmbedActor, EmbedSettings  # noqa: E402
from ood_ray.embed.models import inspect_models  # noqa: E402
from ood_ray.embed.preprocess import PIXELS_PREFIX, preprocessing_key  # noqa: E402


def _batches(info, images: int, batch: int):
    import pyarrow as pa

    _, height, width = info.data_config["input_size"]
    rng = np.random.default_rng(0)
    column = f"{PIXELS_PREFIX}{preprocessing_key(info.data_config)}"
    out = []
    for start in range(0, images, batch):
        n = min(batch, images - start)
        pixels = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
        out.append(pa.table({"image_id": [f"{start + i}" for i in range(n)], column: [p.tobytes() for p in pixels]}))
    return out


def embed_rates(model: str, images: int, batch: int, repeats: int, use_gpu: bool) -> dict:
    import torch

    info = inspect_models([ModelConfig(name=model)])[0]
    batches = _batches(info, images, batch)
    results, reference = {}, None
    for precision in ("fp32", "fp16", "bf16"):
        settings = EmbedSettings(top_k=5, max_full_probabilities=0, num_cpus=1, num_gpus=1 if use_gpu else 0,
                                 precision=precision)
        actor = EmbedActor([info], settings)
        actor(batches[0])  # warm-up: cuDNN autotuning, allocator
        best, outputs = float("inf"), []
        for _ in range(repeats):
            if use_gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            outputs = [actor(b) for b in batches]
            best = min(best, time.perf_counter() - started)
        embedding = np.concatenate([np.array(o.column(f"{EMBEDDING_PREFIX}{info.alias}").to_pylist(), np.float64)
                                    for o in outputs])
        if reference is None:
            reference = embedding
        cosine = np.sum(embedding * reference, 1) / (np.linalg.norm(embedding, axis=1) * np.linalg.norm(reference, axis=1))
        results[precision] = {"images_per_s": round(images / best, 1), "cosine_min": float(cosine.min()),
                              "cosine_mean": float(cosine.mean())}
    return results


def ray_pipeline_rate(model: str, images: int, batch: int, use_gpu: bool) -> dict:
    import ray

    info = inspect_models([ModelConfig(name=model)])[0]
    batches = _batches(info, images, batch)
    settings = EmbedSettings(top_k=5, max_full_probabilities=0, num_cpus=1, num_gpus=1 if use_gpu else 0)
    started = time.perf_counter()
    dataset = ray.data.from_arrow(batches).map_batches(
        EmbedActor, fn_constructor_args=([info], settings), batch_format="pyarrow", batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, num_gpus=1 if use_gpu else None)
    rows = sum(b.num_rows for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None))
    seconds = time.perf_counter() - started
    return {"images_per_s": round(rows / seconds, 1), "seconds": round(seconds, 2)}


def autoencoder_seconds(images: int, use_gpu: bool) -> dict:
    from ood_ray.autoencoder.train import train_autoencoder

    config = load_config(None, ["autoencoder.enabled=true", f"autoencoder.use_gpu={str(use_gpu).lower()}",
                                "autoencoder.epochs=2"], source="s", out="o").autoencoder
    pixels = np.random.default_rng(0).integers(0, 256, (images, config.image_size, config.image_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        _, report = train_autoencoder(pixels, config, folder)
    return {"seconds": round(time.perf_counter() - started, 2), "final_loss": report["final_loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--allow-cpu", action="store_true", help="no CUDA: run on the CPU with small sizes")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args()
    import ray
    import torch

    use_gpu = torch.cuda.is_available()
    if not use_gpu and not args.allow_cpu:
        print("no CUDA device here: nothing measured (run on a GPU machine, or --allow-cpu to check the script)")
        return 2
    if not use_gpu:
        args.images, args.batch, args.repeats, args.models = 32, 16, 1, "test_resnet"
    device = torch.cuda.get_device_name(0) if use_gpu else "cpu"
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    results: dict = {"device": device, "images": args.images, "batch": args.batch, "embed": {}, "ray_embed": {},
                     "autoencoder": {}}
    for model in args.models.split(","):
        results["embed"][model] = {"cpu": embed_rates(model, min(args.images, 256), args.batch, 1, False)}
        if use_gpu:
            results["embed"][model]["cuda"] = embed_rates(model, args.images, args.batch, args.repeats, True)
        results["ray_embed"][model] = ray_pipeline_rate(model, args.images, args.batch, use_gpu)
    for gpu in sorted({False, use_gpu}):
        results["autoencoder"]["cuda" if gpu else "cpu"] = autoencoder_seconds(4096 if use_gpu else 256, gpu)
    ray.shutdown()
    print(f"\ndevice: {device}")
    print(f"{'model':<14}{'where':<6}{'precision':<10}{'images/s':>10}{'cos min':>10}{'cos mean':>10}")
    for model, by_device in results["embed"].items():
        for where, by_precision in by_device.items():
            for precision, r in by_precision.items():
                print(f"{model:<14}{where:<6}{precision:<10}{r['images_per_s']:>10.1f}{r['cosine_min']:>10.5f}"
                      f"{r['cosine_mean']:>10.5f}")
    for model, r in results["ray_embed"].items():
        print(f"{model:<14}ray   fp32      {r['images_per_s']:>10.1f}   (Ray Data, one actor, end to end)")
    for where, r in results["autoencoder"].items():
        print(f"autoencoder   {where:<6}{r['seconds']:>8.2f} s   final loss {r['final_loss']:.5f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
