"""Manifests (layouts, ids, relative URIs) and the run directory's commit protocol."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import xxhash

from ood_ray.config import ConfigError, load_config
from ood_ray.run.layout import RunLayout, read_run, table_files
from ood_ray.io.sources import build_manifest, compute_image_ids
from ood_ray.tables import RESERVED_COLUMNS


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_image_ids_are_stable_and_repeats_are_disambiguated():
    ids = compute_image_ids(["/a.png", "/b.png", "/a.png", "/a.png"])
    assert ids[0] == xxhash.xxh3_128_hexdigest(b"/a.png")
    assert ids[2] == xxhash.xxh3_128_hexdigest(b"\x001\x00/a.png")
    assert len(set(ids)) == 4
    assert compute_image_ids(["/a.png", "/b.png", "/a.png", "/a.png"]) == ids
    # No real URI can produce a repeat's id: a file literally named like the old "#1" scheme, and
    # URIs that hold the separator themselves, all keep distinct ids.
    tricky = ["m/a.png", "m/a.png", "m/a.png#1", "\x001\x00m/a.png", "\x001\x00m/a.png", "1\x00m/a.png"]
    assert len(set(compute_image_ids(tricky))) == len(tricky)


def test_folder_layouts(tmp_path):
    touch(tmp_path / "train" / "cat" / "1.png")
    touch(tmp_path / "dog" / "2.png")
    touch(tmp_path / "3.png")
    touch(tmp_path / ".hidden" / "4.png")
    touch(tmp_path / "train" / "cat" / ".DS_Store")
    config = load_config(None, [], source=str(tmp_path), out=str(tmp_path / "out"))
    manifest = build_manifest(config, RESERVED_COLUMNS)
    rows = {r["uri"].rsplit("/", 1)[1]: (r["split"], r["label"]) for r in manifest.to_pylist()}
    assert rows == {"1.png": ("train", "cat"), "2.png": (None, "dog"), "3.png": (None, None)}
    flat = build_manifest(load_config(None, ["io.layout=flat"], source=str(tmp_path), out="o"), RESERVED_COLUMNS)
    assert set(flat.column("label").to_pylist()) == {None}
    only_png = build_manifest(load_config(None, ["io.extensions=.jpg"], source=str(tmp_path), out="o"), RESERVED_COLUMNS)
    assert only_png.num_rows == 0


def test_manifest_resolves_relative_uris_and_carries_columns(tmp_path):
    touch(tmp_path / "imgs" / "a.png")
    (tmp_path / "m.csv").write_text("uri,label,camera\nimgs/a.png,3,canon\n/abs/b.png,,nikon\n")
    manifest = build_manifest(load_config(None, [], source=str(tmp_path / "m.csv"), out="o"), RESERVED_COLUMNS)
    rows = manifest.to_pylist()
    assert rows[0]["uri"] == str(tmp_path / "imgs" / "a.png")
    assert rows[0]["label"] == "3" and rows[0]["camera"] == "canon"
    assert rows[1]["uri"] == "/abs/b.png" and rows[1]["split"] is None


def test_manifest_errors_are_config_errors(tmp_path):
    (tmp_path / "nouri.csv").write_text("path\na.png\n")
    with pytest.raises(ConfigError, match="no 'uri' column"):
        build_manifest(load_config(None, [], source=str(tmp_path / "nouri.csv"), out="o"), RESERVED_COLUMNS)
    (tmp_path / "clash.csv").write_text("uri,mean\na.png,1\n")
    with pytest.raises(ConfigError, match="collide"):
        build_manifest(load_config(None, [], source=str(tmp_path / "clash.csv"), out="o"), RESERVED_COLUMNS)
    with pytest.raises(ConfigError, match="not a folder"):
        build_manifest(load_config(None, [], source=str(tmp_path / "nope"), out="o"), RESERVED_COLUMNS)


def _commit(out, rows: int) -> RunLayout:
    run_dir = RunLayout(str(out))
    uri = run_dir.write_part("images", "00000", pa.table({"image_id": [str(i) for i in range(rows)]}))
    run_dir.commit({"images": [(uri, rows)]}, {"note": rows})
    return run_dir


def test_commit_lists_files_and_removes_stale_ones(tmp_path):
    first = _commit(tmp_path, 3)
    with pytest.raises(ConfigError, match="overwrite"):
        RunLayout(str(tmp_path)).check_writable(overwrite=False)
    # A crashed run leaves part files but no commit: they live apart, so even a plain glob over
    # OUT/images still sees exactly the first run.
    crashed = RunLayout(str(tmp_path))
    crashed.write_part("images", "00000", pa.table({"image_id": ["x"]}))
    run = read_run(str(tmp_path))
    assert run["run_id"] == first.run_id and run["tables"]["images"]["rows"] == 3
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"part-{first.run_id}-00000.parquet"]
    # The next committed run replaces both: one file, its own; no other run's folder is left.
    second = _commit(tmp_path, 5)
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files == [f"part-{second.run_id}-00000.parquet"]
    assert sorted(p.name for p in (tmp_path / "_runs").iterdir()) == [second.run_id]
    run = read_run(str(tmp_path))
    assert run["tables"]["images"]["rows"] == 5 and run["note"] == 5
    assert table_files(str(tmp_path), run, "images") == [str(tmp_path / "images" / files[0])]
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == second.run_id
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_reading_an_uncommitted_directory_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no committed run"):
        read_run(str(tmp_path))


def test_listing_follows_file_links_once_and_never_reenters_a_folder(tmp_path):
    import os

    from ood_ray.io.listing import walk_local

    root = tmp_path / "data"
    touch(root / "cat" / "1.png")
    touch(root / "cat" / "back\\slash.png")
    touch(tmp_path / "elsewhere" / "2.png")
    os.symlink("..", root / "cat" / "loop")                  # a loop back to the root
    os.symlink(tmp_path / "elsewhere", root / "linked")       # a folder outside the tree, followed once
    os.symlink(tmp_path / "elsewhere", root / "linked_again")  # the same folder again: not re-entered
    os.symlink("1.png", root / "cat" / "alias.png")           # a link to a file: a row of its own
    os.symlink("gone.png", root / "cat" / "dangling.png")
    os.mkfifo(root / "cat" / "pipe.png")
    (root / os.fsdecode(b"\xff.png")).write_bytes(b"x")
    entries, report = walk_local(str(root))
    by_name = {e.uri.rsplit("/", 1)[1]: e for e in entries}
    assert sorted(by_name) == sorted(["1.png", "back\\slash.png", "2.png", "alias.png", "dangling.png", "pipe.png",
                                      "%FF.png"])
    assert by_name["2.png"].parts == ("linked", "2.png")
    assert by_name["back\\slash.png"].parts == ("cat", "back\\slash.png")
    assert by_name["dangling.png"].error.startswith("broken symbolic link")
    assert by_name["pipe.png"].error == "a FIFO, not a regular file"
    assert by_name["%FF.png"].uri.startswith("file://") and by_name["%FF.png"].error is None
    assert report.links_skipped == 2
    manifest = build_manifest(load_config(None, [], source=str(root), out="o"), RESERVED_COLUMNS)
    labels = {u.rsplit("/", 1)[1]: label for u, label in zip(manifest.column("uri").to_pylist(),
                                                             manifest.column("label").to_pylist())}
    assert labels["back\\slash.png"] == "cat"


def test_decode_journal_gives_a_row_up_after_two_deaths(tmp_path):
    from ood_ray.io.journal import DecodeJournal

    ids = ["a", "b", "c"]

    def attempt():
        return DecodeJournal(str(tmp_path), "block", len(ids))

    first = attempt()
    assert first.begin(0) and (first.end(0) is None) and first.begin(1)   # dies while decoding row 1
    second = attempt()
    assert second.retried and second.begin(0) and (second.end(0) is None)
    assert second.begin(1)                                                 # retried once; dies again
    third = attempt()
    assert third.begin(0)
    assert not third.begin(1)                                              # given up
    assert third.begin(2)
    third.finish()
    assert not (tmp_path / "block").exists()


def test_a_local_read_returns_the_file_or_its_first_limit_bytes_and_reads_on_past_its_stat_size(tmp_path):
    """The read asks for the size ``fstat`` gives plus one byte, not for ``limit`` bytes: exactly
    the file up to ``limit`` bytes, whatever the two sizes; a file whose ``fstat`` size is 0 but
    that has content (``/proc``) is read to its end; a FIFO is refused without blocking."""
    import os

    from ood_ray.io.storage import NotARegularFile, read_bytes

    data = os.urandom(3_000_001)
    path = tmp_path / "blob"
    path.write_bytes(data)
    for limit in (None, 1, 10, 3_000_000, 3_000_001, 3_000_002, 1 << 30):
        assert read_bytes(str(path), limit=limit) == (data if limit is None else data[:limit])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_bytes(str(empty)) == b"" and read_bytes(str(empty), limit=5) == b""
    status = read_bytes("/proc/self/status")
    assert os.stat("/proc/self/status").st_size == 0 and status.startswith(b"Name:") and status.endswith(b"\n")
    assert read_bytes("/proc/self/status", limit=6) == b"Name:\t"
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotARegularFile):
        read_bytes(str(tmp_path / "pipe"), limit=10)
