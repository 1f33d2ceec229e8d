"""Throughput of the embedding stage (Ray Data actor pool) against a plain PyTorch loop.

Same model, same preprocessed images (held in memory as the scan hands them over: uint8 H x W x 3),
same batch size and torch threads, in the same run, warmed up, repetitions alternated and the best
of each kept:

- ``plain``: ``for batch: normalize -> forward_features -> forward_head(pre_logits) + head``
  under ``torch.inference_mode`` -- the loop a user would write;
- ``ray``: ``ray.data.from_arrow(...).map_batches(EmbedActor, ActorPoolStrategy(size=1))`` with the
  actor holding the same threads; the actor also computes the softmax, top-k and the four logit
  scores and returns Arrow columns. Reported end to end for ``2N`` images (actor start-up, torch
  import and model build included) and as the marginal rate ``N / (T(2N) - T(N))``, which cancels
  the fixed start-up and is what a long job sees.

Models: ``resnet18`` (small) and ``resnet50`` (mid) at 224 px with timm's random initialisation
(throughput does not depend on the weights), and the CIFAR ResNet-20 and -56 at 32 px from
``../shared/data/cifar10_resnets`` through the custom import path
``ood_ray.embed.cifar_resnet:resnetNN``. Target: ray / plain >= 0.85.

Usage: ``python benchmarks/bench_embed.py [--threads 2] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from bench_setup import prepare  # noqa: E402

from ood_ray.config import ModelConfig  # noqa: E402
from ood_ray.embed.models import build_model, embed_and_logits, inspect_models  # noqa: E402
from ood_ray.embed.preprocess import PIXELS_PREFIX, normalize_batch, prepare_model_input, preprocessing_key  # noqa: E402
from ood_ray.io.decode import decode_image  # noqa: E402


def model_inputs(info, n: int) -> np.ndarray:
    """``n`` real images (CIFAR-10 test JPEGs, DTD photos for 224 px) prepared for the model."""
    _, h, w = info.data_config["input_size"]
    pattern = ("cifar10/test/*/*.jpg", 10000) if h <= 64 else ("dtd/original/*/*.jpg", 100)
    files = sorted(SHARED.glob(pattern[0]))
    blobs = [files[i % len(files)].read_bytes() for i in range(min(n, pattern[1]))]
    prepared = [np.frombuffer(prepare_model_input(decode_image(b, 10**9).pixels, info.data_config), np.uint8).reshape(h, w, 3)
                for b in blobs]
    return np.stack([prepared[i % len(prepared)] for i in range(n)])


def plain_loop(model, info, images: np.ndarray, batch_size: int) -> float:
    import torch

    mean, std = info.data_config["mean"], info.data_config["std"]
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalize_batch(torch.from_numpy(images[i : i + batch_size]), mean, std)
            embed_and_logits(model, x)
    return time.perf_counter() - started


def ray_stage(info, images: np.ndarray, batch_size: int, threads: int) -> float:
    """Seconds for the Ray Data actor stage to embed ``images`` (start-up included)."""
    import pyarrow as pa
    import ray

    from ood_ray.embed.actor import EmbedActor, EmbedSettings

    key = preprocessing_key(info.data_config)
    flat = images.reshape(len(images), -1)
    table = pa.table({"image_id": [str(i) for i in range(len(images))],
                      f"{PIXELS_PREFIX}{key}": pa.array([row.tobytes() for row in flat], pa.binary())})
    blocks = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.op_resource_reservation_enabled = False
    settings = EmbedSettings(top_k=5, max_full_probabilities=1000, num_cpus=threads, num_gpus=0)
    started = time.perf_counter()
    dataset = ray.data.from_arrow(blocks).map_batches(
        EmbedActor, batch_format="pyarrow", batch_size=batch_size,
        fn_constructor_kwargs={"infos": [info], "settings": settings},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=threads,
    )
    rows = dataset.materialize().count()
    assert rows == len(images), (rows, len(images))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "embed.json"))
    args = parser.parse_args()
    if prepare() is None:
        return 2
    import ray
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    cases = [
        ("resnet18 @224", ModelConfig(name="resnet18"), 32, 1024),
        ("resnet50 @224", ModelConfig(name="resnet50"), 32, 384),
        ("cifar resnet20 @32", ModelConfig(name="ood_ray.embed.cifar_resnet:resnet20",
                                          checkpoint=str(SHARED / "cifar10_resnets" / "resnet20-12fca82f.th")), 256, 32768),
        ("cifar resnet56 @32", ModelConfig(name="ood_ray.embed.cifar_resnet:resnet56",
                                          checkpoint=str(SHARED / "cifar10_resnets" / "resnet56-4bfd9763.th")), 256, 16384),
    ]
    results = []
    for label, spec, batch_size, n in cases:
        info = inspect_models([spec])[0]
        images = model_inputs(info, n)
        model = build_model(spec, info.import_root)
        doubled = np.concatenate([images, images])
        plain_loop(model, info, images, batch_size)  # oneDNN builds its kernels on first use
        t_plain, t_ray_n, t_ray_2n = [], [], []
        for _ in range(args.repeats):  # alternated, best of each: this machine is noisy
            t_plain.append(plain_loop(model, info, doubled, batch_size))
            t_ray_n.append(ray_stage(info, images, batch_size, args.threads))
            t_ray_2n.append(ray_stage(info, doubled, batch_size, args.threads))
        t_plain, t_ray_n, t_ray_2n = min(t_plain), min(t_ray_n), min(t_ray_2n)
        marginal = t_ray_2n - t_ray_n
        results.append({
            "model": label, "images": 2 * n, "batch_size": batch_size, "threads": args.threads,
            "plain_images_per_s": 2 * n / t_plain,
            "ray_images_per_s_end_to_end": 2 * n / t_ray_2n,
            "ray_images_per_s_marginal": n / marginal,
            "ray_startup_s": t_ray_n - marginal,
            "ratio_marginal": (n / marginal) / (2 * n / t_plain),
            "ratio_end_to_end": t_plain / t_ray_2n,
        })
        r = results[-1]
        print(f"{label:<20} n={2 * n:<5} batch={batch_size:<4} plain {r['plain_images_per_s']:8.1f}/s  "
              f"ray marginal {r['ray_images_per_s_marginal']:8.1f}/s  ratio {r['ratio_marginal']:.2f}  |  "
              f"end to end {r['ray_images_per_s_end_to_end']:8.1f}/s ({r['ratio_end_to_end']:.2f}), start-up {r['ray_startup_s']:.1f}s",
              flush=True)
    ray.shutdown()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
