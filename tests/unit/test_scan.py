"""The per-block scan without Ray: one row per object, statuses, columns, bounded reads."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ood_ray.stages.scan import split_scan_block
from ood_ray.scan import ScanSettings, scan_batch

SETTINGS = ScanSettings(max_pixels=10**8, max_file_bytes=10_000, fetch_threads=1, per_channel_sharpness=False)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scan_batch_rows_statuses_and_channel_rows(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "rgb.png": png(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "gray.png": png(rng.integers(0, 256, (20, 30), dtype=np.uint8)),
        "big.png": png(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)),  # > 10,000 bytes
        "junk.png": b"not an image",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / n) for n in files] + [str(tmp_path / "gone.png")]
    manifest = pa.table({"image_id": [f"id{i}" for i in range(5)], "uri": uris, "split": [None] * 5,
                         "label": ["a"] * 5, "listed_size": pa.array([None, None, len(files["big.png"]), None, None], pa.int64())})
    block = scan_batch(manifest, SETTINGS)
    assert block.num_rows == 5
    assert block.column("status").to_pylist() == ["ok", "ok", "too_large", "undecodable", "missing"]
    images, channels, predictions = split_scan_block(block)
    assert predictions.num_rows == 0  # no models
    rows = images.to_pylist()
    assert [r["channels"] for r in rows[:2]] == [3, 1]
    assert rows[2]["file_size"] == len(files["big.png"])  # from the listing: the read stopped early
    assert rows[2]["hash_file"] is None and rows[2]["mean"] is None
    assert rows[3]["file_size"] == len(b"not an image") and rows[3]["mean"] is None
    assert rows[4]["error"] and rows[4]["file_size"] is None
    assert "listed_size" not in images.column_names and not any(c.startswith("_ch_") for c in images.column_names)
    assert channels.num_rows == 4
    assert channels.column("band").to_pylist() == ["R", "G", "B", "L"]
    assert channels.column("channel").to_pylist() == [0, 1, 2, 0]
    assert channels.column("image_id").to_pylist() == ["id0"] * 3 + ["id1"]


def test_a_statistic_that_cannot_be_measured_is_null_not_nan(tmp_path):
    """``noise_ratio`` needs a 3 x 3 interior: a 2 x 5 image gets a null (SQL's "not measured", which
    an ``ORDER BY ... DESC`` puts last), not a NaN (which DuckDB sorts above every number)."""
    rng = np.random.default_rng(1)
    for name, shape in (("thin.png", (2, 5, 3)), ("square.png", (8, 8, 3))):
        (tmp_path / name).write_bytes(png(rng.integers(0, 256, shape, dtype=np.uint8)))
    manifest = pa.table({"image_id": ["id0", "id1"], "uri": [str(tmp_path / "thin.png"), str(tmp_path / "square.png")],
                         "split": [None] * 2, "label": ["a"] * 2, "listed_size": pa.array([None, None], pa.int64())})
    images, _, _ = split_scan_block(scan_batch(manifest, SETTINGS))
    thin, square = images.to_pylist()
    assert thin["status"] == "ok" and thin["noise_ratio"] is None and thin["edge_contrast"] > 0
    assert square["noise_ratio"] > 0


def test_the_cyclic_gc_is_paused_for_a_block_and_restored_as_it_was():
    import gc

    from ood_ray.scan import cyclic_gc_paused

    assert gc.isenabled()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("a block that fails")
    except RuntimeError:
        pass
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_the_allocator_is_tuned_once_per_process_and_zero_leaves_it_alone():
    """``io.malloc_retain_mb`` reaches the scan's settings; ``tune_allocator`` sets glibc's
    thresholds once per value (a second call with the same value does nothing) and 0 never."""
    import subprocess
    import sys

    from ood_ray.config import load_config
    from ood_ray.scan import ScanSettings

    assert ScanSettings.from_config(load_config(None, ["io.malloc_retain_mb=64"], source="s", out="o")).malloc_retain_mb == 64
    with pytest.raises(Exception, match="io.malloc_retain_mb"):
        load_config(None, ["io.malloc_retain_mb=-1"], source="s", out="o")
    # in a fresh process: the first call sets, the same value again does not, another value does
    script = ("from ood_ray.io.memory import tune_allocator as t; "
              "print(t(0), t(64), t(64), t(32))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "False", "True"]
