"""The global passes give the same results as Ray tasks and in the driver process
(:class:`ood_ray.parts.InProcessParts`, chosen by :func:`ood_ray.parts.parts_for` for small tables)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ood_ray.config import load_config
from ood_ray.dedup.hash_groups import run_dedup
from ood_ray.lint.linter import summarize_metrics
from ood_ray.parts import InProcessParts, RayParts, parts_for
from ood_ray.sampling import Sampler, hash_order
from ood_ray.stats.image import IMAGE_STAT_NAMES


def _write_parts(folder, n=3000, parts=5):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    hashes[1::7] = hashes[::7][: len(hashes[1::7])] ^ np.uint64(3)  # near copies, 2 bits apart
    dhashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    dhashes[1::7] = dhashes[::7][: len(dhashes[1::7])] ^ np.uint64(1)  # and close in the second hash
    table = pa.table({
        "image_id": [f"{i:032x}" for i in range(n)], "status": ["ok"] * n,
        "split": rng.choice(["train", "test"], n).tolist(), "label": rng.choice(["a", "b", "c"], n).tolist(),
        "hash_pixels": [f"{(i % 2900) * 0x9E3779B97F4A7C15 % 2**64:016x}{i % 2900:016x}" for i in range(n)],  # 100 copies
        "phash": pa.array(hashes, pa.uint64()), "dhash": pa.array(dhashes, pa.uint64()),
        **{name: rng.standard_t(4, n) for name in IMAGE_STAT_NAMES},
    })
    folder.mkdir()
    uris = []
    for i, chunk in enumerate(np.array_split(np.arange(n), parts)):
        path = folder / f"part-{i}.parquet"
        pq.write_table(table.take(pa.array(chunk)), path)
        uris.append(str(path))
    return uris


def test_ray_tasks_and_the_driver_give_the_same_results(ray_session, tmp_path):
    uris = _write_parts(tmp_path / "images")
    config = load_config(None, [], source="s", out="o")
    on_ray, in_driver = RayParts(uris), InProcessParts(uris)
    assert summarize_metrics(on_ray, list(IMAGE_STAT_NAMES[:6]), True) == \
        summarize_metrics(in_driver, list(IMAGE_STAT_NAMES[:6]), True)
    ray_groups, _, ray_summary = run_dedup(on_ray, config.dedup, 3000)
    driver_groups, _, driver_summary = run_dedup(in_driver, config.dedup, 3000)
    assert ray_groups.equals(driver_groups) and ray_summary == driver_summary
    assert ray_summary["groups"]["exact/pixel"] == 100 and ray_summary["groups"]["near/phash"] > 0
    args = (["mean"], "status = 'ok'", hash_order(3), 200, "label", 50)
    assert Sampler(on_ray).select(*args).equals(Sampler(in_driver).select(*args))


def test_small_tables_run_in_the_driver_and_large_ones_as_tasks(ray_session, tmp_path):
    uris = _write_parts(tmp_path / "images")
    size = sum((tmp_path / "images" / f"part-{i}.parquet").stat().st_size for i in range(5))
    assert type(parts_for(uris, driver_max_bytes=size)) is InProcessParts
    assert type(parts_for(uris, driver_max_bytes=size - 1)) is RayParts
    assert type(parts_for(uris, driver_max_bytes=0)) is RayParts
