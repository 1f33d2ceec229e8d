"""Inputs in the workers (:mod:`ood_ray.io.inputs`): the manifest parts written by Ray tasks hold
the same rows and ids as the whole manifest read in one process -- Parquet manifests cut into many
fragments, folders of manifest parts, URIs repeated across fragments, a tree of folders fanned out
with links to folders entered once -- and a column typed differently in two parts is refused."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ood_ray.config import ConfigError, load_config
from ood_ray.io import storage
from ood_ray.io.inputs import SEQUENCE, build_inputs, plan_fragments
from ood_ray.io.listing import walk_local
from ood_ray.io.sources import build_manifest, compute_image_ids
from ood_ray.run.layout import RunLayout
from ood_ray.stages.scan import read_block
from ood_ray.tables import RESERVED_COLUMNS

pytestmark = pytest.mark.ray


def _parts(tmp_path, source: str, *sets: str):
    config = load_config(None, list(sets), source=source, out=str(tmp_path / "out"))
    inputs = build_inputs(config, RESERVED_COLUMNS, RunLayout(config.out), storage.DEFAULT_RETRY)
    tables = [pq.read_table(uri) for uri, _ in inputs.parts]
    assert [t.num_rows for t in tables] == [rows for _, rows in inputs.parts]
    table = pa.concat_tables(tables) if tables else None
    return config, inputs, table


def test_parquet_manifest_in_many_fragments_keeps_ids_and_numbers_repeats_across_them(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    uris = [f"s3://bucket/img/{i}.png" for i in range(5000)]
    repeats = rng.integers(0, 5000, 700)  # named again later, some three or more times
    uris += [uris[i] for i in repeats]
    order = rng.permutation(len(uris))
    uris = [uris[i] for i in order]
    pq.write_table(pa.table({"uri": uris, "label": [f"c{i % 7}" for i in range(len(uris))]}),
                   tmp_path / "m.parquet", row_group_size=300)
    config, inputs, table = _parts(tmp_path, str(tmp_path / "m.parquet"), "io.manifest_rows_per_task=900",
                                   "io.rows_per_block=100")
    kind, fragments = plan_fragments(config, RESERVED_COLUMNS)
    assert kind == "manifest" and len(fragments) == 7  # 19 row groups of 300, three per task
    assert table.column("uri").to_pylist() == uris  # manifest order
    assert table.column("image_id").to_pylist() == compute_image_ids(uris)  # repeat j hashes NUL j NUL uri
    assert len(set(table.column("image_id").to_pylist())) == len(uris)
    blocks = [read_block(inputs.parts, 100, b) for b in range(sum(-(-rows // 100) for _, rows in inputs.parts))]
    assert all(b.num_rows <= 100 for b in blocks)  # blocks of 100 rows, never across parts
    assert pa.concat_tables(blocks).equals(table.drop_columns([SEQUENCE]))
    whole = build_manifest(config, RESERVED_COLUMNS)
    assert whole.equals(table.drop_columns([SEQUENCE]))


def test_folder_of_manifest_parts_is_one_manifest(ray_session, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"uri": ["a.png", "b.png"], "weight": [1.0, 2.0]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"uri": ["b.png", "c.png"], "weight": [3.0, 4.0]}), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    config, inputs, table = _parts(tmp_path, str(folder))
    expected = [os.path.join(str(folder), name) for name in ("a.png", "b.png", "b.png", "c.png")]
    assert table.column("uri").to_pylist() == expected  # relative to the part's folder
    assert table.column("image_id").to_pylist() == compute_image_ids(expected)
    assert table.column("weight").to_pylist() == [1.0, 2.0, 3.0, 4.0]
    pq.write_table(pa.table({"uri": ["d.png"], "weight": ["heavy"]}), folder / "part-2.parquet")
    with pytest.raises(ConfigError, match="'weight' is double in one part and string"):
        _parts(tmp_path, str(folder))


def test_folder_fan_out_lists_what_one_walk_lists(ray_session, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("cat", "dog", "eel"):
            for i in range(3):
                (root / split / label).mkdir(parents=True, exist_ok=True)
                (root / split / label / f"{i}.png").write_bytes(b"x")
    (root / "top.png").write_bytes(b"x")
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "elsewhere" / "deep" / "far.png").write_bytes(b"x")
    os.symlink("../..", root / "train" / "cat" / "loop")            # back to the root: not entered
    os.symlink(tmp_path / "elsewhere", root / "test" / "linked")     # outside: entered once
    os.symlink(tmp_path / "elsewhere", root / "train" / "again")     # the same folder: not entered
    os.symlink(root / "train" / "dog", root / "test" / "inside")     # a folder of the tree: not entered
    os.symlink(tmp_path / "elsewhere" / "deep", root / "zz_deep")    # inside the linked folder: not again
    config, inputs, table = _parts(tmp_path, str(root), "ray.num_cpus=2")
    kind, fragments = plan_fragments(config, RESERVED_COLUMNS, cpus=4)
    assert kind == "listing" and len(fragments) > 6  # fanned out two levels down
    entries, report = walk_local(str(root))
    assert sorted(table.column("uri").to_pylist()) == sorted(e.uri for e in entries)
    assert len(entries) == 3 * 2 * 3 + 2
    labels = dict(zip(table.column("uri").to_pylist(), table.column("label").to_pylist()))
    splits = dict(zip(table.column("uri").to_pylist(), table.column("split").to_pylist()))
    far = [u for u in labels if u.endswith("far.png")]
    assert len(far) == 1 and splits[far[0]] == "test" and labels[far[0]] == "deep"
    assert inputs.listing["symlinks_to_listed_folders_skipped"] == report.links_skipped == 4


def test_blocks_are_read_across_row_groups_of_a_large_part(ray_session, tmp_path):
    uris = [f"s3://bucket/{i}.png" for i in range(20_000)]
    pq.write_table(pa.table({"uri": uris}), tmp_path / "m.parquet")
    _, inputs, table = _parts(tmp_path, str(tmp_path / "m.parquet"), "io.rows_per_block=100")
    groups = pq.ParquetFile(inputs.parts[0][0]).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [8200, 8200, 3600]
    blocks = [read_block(inputs.parts, 100, b) for b in range(200)]
    assert [b.num_rows for b in blocks] == [100] * 200
    assert pa.concat_tables(blocks).column("uri").to_pylist() == uris
