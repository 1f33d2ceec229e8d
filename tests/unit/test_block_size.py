"""Scan blocks sized by the work (:mod:`ood_ray.io.block_size`): known answers for tiny JPEGs,
photos, model inputs and small runs, and the mean size read from a listing or from the objects."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ood_ray.config import load_config
from ood_ray.io import storage
from ood_ray.io.block_size import MAX_ROWS, MIN_ROWS, choose_rows_per_block, mean_object_bytes, rows_for


@pytest.mark.parametrize("mean,output,rows,cpus,expected", [
    (1_100, 0, 0, 2, 2048),          # CIFAR-size JPEGs: 0.5 s / 0.33 ms = 1,538 -> 2,048 (nearest in log2)
    (924, 0, 0, 2, 2048),            # CIFAR-10's JPEGs: 0.5 s / 0.28 ms = 1,779 -> 2,048
    (4_000, 0, 0, 2, 512),           # 0.5 s / 1.05 ms = 476 -> 512
    (150_000, 0, 0, 2, 16),          # photos: 0.5 s / 37.5 ms = 13.3 -> 16
    (250_000, 0, 0, 2, 8),           # larger photos: 0.5 s / 62.5 ms = 8 -> 8
    (400_000, 0, 0, 2, 4),           # 0.5 s / 100 ms = 5 -> 4 (log2 5 = 2.3)
    (20_000_000, 0, 0, 2, MIN_ROWS),  # huge objects: never below MIN_ROWS
    (10, 0, 0, 2, MAX_ROWS),         # empty-ish files: never above MAX_ROWS
    (None, 0, 0, 2, 64),             # nothing known: 64
    (1_100, 3 * 224 * 224, 0, 2, 128),  # a 224 px model input per row: 32 MB / 150 KB = 222 -> 128
    (1_100, 0, 1_000, 2, 64),        # 1,000 rows on 2 CPUs: at least 4 blocks per CPU -> 125 -> 64 (caps round down)
    (1_100, 0, 10_000, 2, 1024),     # CIFAR-10 test on 2 CPUs: 1,250 -> 1,024
    (10, 0, 24, 2, MIN_ROWS),        # fewer rows than the blocks wanted: still MIN_ROWS
])
def test_rows_per_block_known_answers(mean, output, rows, cpus, expected):
    got = rows_for(mean, 0.5, output, rows, cpus)
    assert got == expected
    assert got & (got - 1) == 0  # a power of two: it divides the manifest's 8,192-row row groups


def test_mean_size_from_the_listing_or_from_the_objects(tmp_path):
    files = []
    for i, size in enumerate([100, 300, 500, 700]):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(b"x" * size)
        files.append(str(path))
    listed = tmp_path / "listed.parquet"
    pq.write_table(pa.table({"uri": files, "listed_size": [1000, 1000, 3000, 3000]}), listed)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"uri": files + [str(tmp_path / "missing.bin")]}), plain)
    assert mean_object_bytes([(str(listed), 4)], storage.DEFAULT_RETRY) == 2000  # the listing's sizes
    assert mean_object_bytes([(str(plain), 5)], storage.DEFAULT_RETRY) == 400  # stat of each; the missing one left out
    config = load_config(None, [], source="s", out="o")
    assert choose_rows_per_block([(str(plain), 5)], config, storage.DEFAULT_RETRY, 2.0) == MIN_ROWS  # 5 rows, 8 CPUs' worth
    fixed = load_config(None, ["io.rows_per_block=48"], source="s", out="o")
    assert choose_rows_per_block([(str(plain), 5)], fixed, storage.DEFAULT_RETRY, 2.0) == 48
