"""Inputs in the workers: the manifest is read, listed and given its ids by Ray tasks, written as
the run's ``manifest`` parts; the driver holds one small record per part, never a row.

**Fragments** (planned on the driver from file metadata and folder names only):

- a Parquet manifest: one fragment per group of row groups (about ``io.manifest_rows_per_task``
  rows), of every file when SOURCE is a folder of manifest parts;
- a CSV manifest: one fragment per file (CSV cannot be split without reading it);
- a local folder: one fragment per real sub-folder (walked recursively by its task), one more
  level down while there are fewer than four fragments per CPU, plus a fragment for the files
  directly in each folder that was split; links to folders are not followed by the tasks but
  returned, and entered afterwards one at a time in path order when their target was not listed
  (so a loop or a second link to one folder adds no rows, as in :mod:`ood_ray.io.listing`);
- an ``s3://`` prefix: one fragment per common prefix (``/``-delimited, two levels while there
  are few), plus one for the objects directly under the prefix.

**Ids.** Each fragment task resolves URIs and computes ``image_id`` (XXH3-128 of the URI, see
:mod:`ood_ray.io.sources`) and a sequence number (fragment, row) that orders the manifest. URIs
named more than once are found by a hash-partitioned shuffle on the id (:mod:`ood_ray.parts`):
each partition sorts its repeated ids by sequence number and gives repeat ``j`` its id
``XXH3-128(NUL j NUL uri)``; the parts holding repeats are rewritten by their tasks. A listing has
no repeats (paths are distinct), so it skips the shuffle.

**Blocks.** Block ``b`` of the scan is ``io.rows_per_block`` consecutive rows of one part; parts
are written with row groups of a whole number of blocks (at least 8,192 rows, so that footers stay
small), and the scan reads a block from the one row group that holds it
(:func:`ood_ray.stages.scan.read_block`). The run's fingerprint holds a digest of
every part (for ``--resume``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from ood_ray.columns import INPUT_ERROR
from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage
from ood_ray.io.listing import FolderLink, ListingReport, walk_folder, walk_s3

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".parquet", ".csv", ".csv.gz")
#: Internal column: ``fragment << 32 | row``, the manifest order (dropped before the scan).
SEQUENCE = "_seq"
MANIFEST_TABLE = "manifest"
#: Rows per row group of a manifest part, at least (a whole number of scan blocks): small row groups
#: make large footers, which every block's read would parse.
MIN_ROW_GROUP_ROWS = 8192


def row_group_rows(rows_per_block: int | None) -> int:
    """Rows per row group of the manifest parts: the smallest multiple of ``rows_per_block`` that
    is at least :data:`MIN_ROW_GROUP_ROWS`; with blocks sized later (``None``, see
    :mod:`ood_ray.io.block_size`) :data:`MIN_ROW_GROUP_ROWS`, which every power of two up to
    ``block_size.MAX_ROWS`` divides."""
    if rows_per_block is None:
        return MIN_ROW_GROUP_ROWS
    return rows_per_block * max(1, -(-MIN_ROW_GROUP_ROWS // rows_per_block))


@dataclass(frozen=True)
class Fragment:
    """One task's share of the inputs (see module docstring)."""

    kind: str  # parquet | csv | folder | files | s3-prefix | s3-files
    path: str
    row_groups: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()
    base: str = ""


@dataclass
class Inputs:
    """The run's manifest as parts: ``[(uri, rows)]`` in manifest order."""

    parts: list[tuple[str, int]]
    digest: str
    rows_per_block: int
    listing: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(rows for _, rows in self.parts)

    def to_state(self) -> dict[str, Any]:
        return {"parts": [list(p) for p in self.parts], "digest": self.digest, "rows_per_block": self.rows_per_block,
                "listing": self.listing}


# -- planning (driver: metadata only) -------------------------------------------------------------

def is_manifest_file(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(source)


def manifest_folder_files(source: str) -> list[str] | None:
    """The manifest parts of a folder (or prefix) whose only entries are manifest files
    (``.parquet``/``.csv``; hidden and ``_`` names ignored), else None: a folder of images. Reads
    the top level only, and stops at the first entry that is not a manifest file."""
    import pyarrow.fs as pafs

    root = storage.normalize_uri(source)
    if storage.is_s3(root):
        fs, path = storage.resolve(root)
        entries = ((info.base_name, info.type == pafs.FileType.Directory, storage.S3_SCHEME + info.path)
                   for info in fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)))
        return _only_manifests(entries)
    try:
        with os.scandir(storage.local_path(root)) as it:
            return _only_manifests((e.name, e.is_dir(), e.path) for e in it)
    except OSError:
        return None


def _only_manifests(entries: Any) -> list[str] | None:
    files = []
    for name, is_folder, uri in entries:
        if name.startswith((".", "_")):
            continue
        if is_folder or not name.lower().endswith(MANIFEST_SUFFIXES):
            return None
        files.append(uri)
    return sorted(files) or None


def _base_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if storage.is_s3(path) else os.path.dirname(storage.normalize_uri(path))


def _manifest_fragments(files: list[str], rows_per_task: int) -> list[Fragment]:
    fragments = []
    for uri in files:
        if not uri.lower().endswith(".parquet"):
            fragments.append(Fragment("csv", uri, base=_base_of(uri)))
            continue
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        group, rows = [], 0
        for index in range(metadata.num_row_groups):
            group.append(index)
            rows += metadata.row_group(index).num_rows
            if rows >= rows_per_task:
                fragments.append(Fragment("parquet", uri, tuple(group), base=_base_of(uri)))
                group, rows = [], 0
        if group or metadata.num_row_groups == 0:
            fragments.append(Fragment("parquet", uri, tuple(group), base=_base_of(uri)))
    return fragments


def _fan_out(root: str, wanted: int, levels: int, kind: str, files_kind: str, subfolders: Any) -> list[Fragment]:
    """Fragments of a tree: ``kind`` (recursive) fragments split, level by level while there are
    fewer than ``wanted``, into one ``files_kind`` fragment for a folder's own entries and one
    ``kind`` fragment per sub-folder (``subfolders(path)``: sorted ``(path, name)``; ``None`` when
    the folder cannot be listed -- its task then reports why)."""
    fragments = [Fragment(kind, root)]
    for _ in range(levels):
        if len(fragments) >= wanted:
            break
        expanded, grew = [], False
        for fragment in fragments:
            children = subfolders(fragment.path) if fragment.kind == kind else None
            if children is None:
                expanded.append(fragment)
                continue
            grew = grew or bool(children)
            expanded.append(Fragment(files_kind, fragment.path, parts=fragment.parts))
            expanded += [Fragment(kind, path, parts=(*fragment.parts, name)) for path, name in children]
        fragments = expanded
        if not grew:
            break
    return fragments


def _local_subfolders(path: str) -> list[tuple[str, str]] | None:
    """Real (not linked), non-hidden sub-folders of a local folder."""
    try:
        with os.scandir(path) as it:
            children = sorted((c for c in it if not c.name.startswith(".") and c.is_dir(follow_symlinks=False)),
                              key=lambda c: c.name)
    except OSError:
        return None
    return [(c.path, storage.display_text(c.name)) for c in children]


def _s3_subfolders(uri: str) -> list[tuple[str, str]]:
    """Common prefixes directly under an ``s3://`` prefix."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    folders = sorted(i.path for i in infos if i.type == pafs.FileType.Directory)
    return [(storage.S3_SCHEME + f, f.rsplit("/", 1)[-1]) for f in folders]


def _local_fragments(root: str, wanted: int) -> list[Fragment]:
    """Real sub-folders (recursive) and each split folder's own files (see module docstring)."""
    return _fan_out(root, wanted, 3, "folder", "files", _local_subfolders)


def _s3_fragments(root: str, wanted: int) -> list[Fragment]:
    """Common prefixes (recursive) and each split prefix's own objects."""
    return _fan_out(root, wanted, 2, "s3-prefix", "s3-files", _s3_subfolders)


def plan_fragments(config: AuditConfig, reserved: set[str], cpus: float = 1.0) -> tuple[str, list[Fragment]]:
    """``(kind, fragments)`` for ``config.source``: ``kind`` is ``manifest`` or ``listing``.
    Raises :class:`ConfigError` when the source does not exist or cannot be read."""
    source = config.source
    wanted = max(4, int(4 * cpus))
    if is_manifest_file(source):
        if not storage.exists(source):
            raise ConfigError(f"source={source!r}: manifest file not found")
        files = [storage.normalize_uri(source)]
    else:
        if not storage.is_s3(source):
            if not os.path.isdir(source):
                raise ConfigError(f"source={source!r}: not a folder, s3:// prefix or manifest ({', '.join(MANIFEST_SUFFIXES)})")
            if not os.access(source, os.R_OK | os.X_OK):
                raise ConfigError(f"source={source!r}: the folder cannot be listed (permission denied)")
        files = manifest_folder_files(source)
        if files is None:
            root = storage.normalize_uri(source)
            if storage.is_s3(root):
                return "listing", _s3_fragments(root, wanted)
            return "listing", _local_fragments(storage.local_path(root), wanted)
    try:
        for uri in files:
            check_manifest_columns(uri, manifest_columns(uri), reserved)
        return "manifest", _manifest_fragments(files, config.io.manifest_rows_per_task)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"source={source!r}: cannot read the manifest: {str(exc).splitlines()[0]}") from None


def manifest_columns(uri: str) -> list[str]:
    """A manifest file's column names, from its footer (Parquet) or its first block (CSV)."""
    import pyarrow.csv as pacsv

    fs, path = storage.resolve(uri)
    if uri.lower().endswith(".parquet"):
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).schema_arrow.names
    with fs.open_input_stream(path, compression="detect") as stream:
        convert = pacsv.ConvertOptions(check_utf8=False)
        return pacsv.open_csv(stream, convert_options=convert).schema.names


def check_manifest_columns(uri: str, columns: list[str], reserved: set[str]) -> None:
    from ood_ray.io.sources import MANIFEST_OWN_COLUMNS

    if "uri" not in columns:
        raise ConfigError(f"source={uri!r}: manifest has no 'uri' column (columns: {', '.join(columns)})")
    clashes = sorted((set(columns) - MANIFEST_OWN_COLUMNS) & reserved)
    if clashes:
        raise ConfigError(f"source={uri!r}: manifest columns {clashes} collide with output columns; rename them")


# -- one fragment (a task) ------------------------------------------------------------------------

@dataclass
class FragmentResult:
    table: pa.Table
    report: ListingReport = field(default_factory=ListingReport)
    visited: set[tuple[int, int]] = field(default_factory=set)
    links: list[FolderLink] = field(default_factory=list)


def read_fragment(fragment: Fragment, index: int, config: AuditConfig) -> FragmentResult:
    """One fragment's manifest rows with ``image_id`` (first occurrences) and ``_seq``."""
    from ood_ray.io.sources import listing_table, normalize_manifest, read_manifest_file

    result = FragmentResult(pa.table({}))
    if fragment.kind in ("parquet", "csv"):
        if fragment.kind == "parquet":
            fs, path = storage.resolve(fragment.path)
            with fs.open_input_file(path) as handle:
                table = pq.ParquetFile(handle).read_row_groups(list(fragment.row_groups))
        else:
            table = read_manifest_file(fragment.path)
        table = normalize_manifest(table, fragment.path, fragment.base)
    else:
        if fragment.kind in ("s3-prefix", "s3-files"):
            entries, report = walk_s3(fragment.path, fragment.parts, recursive=fragment.kind == "s3-prefix")
        else:
            walk = walk_folder(fragment.path, fragment.parts, recursive=fragment.kind == "folder", follow_links=False)
            entries, report, result.visited, result.links = walk.entries, walk.report, walk.visited, walk.links
        result.report = report
        table = listing_table(entries, config.io.layout, config.io.extensions)
    result.table = with_ids(table, index)
    return result


def with_ids(table: pa.Table, fragment_index: int) -> pa.Table:
    """``image_id`` as for a first occurrence (repeats are numbered by the shuffle) first, ``_seq``
    last, ``listed_size`` and the input-error column present."""
    from ood_ray.io.sources import image_id_of

    ids = [image_id_of(uri) for uri in table.column("uri").to_pylist()]
    table = table.add_column(0, "image_id", pa.array(ids, pa.string()))
    if "listed_size" not in table.column_names:
        table = table.append_column("listed_size", pa.nulls(table.num_rows, pa.int64()))
    if INPUT_ERROR not in table.column_names:
        table = table.append_column(INPUT_ERROR, pa.nulls(table.num_rows, pa.string()))
    sequence = (np.int64(fragment_index) << np.int64(32)) + np.arange(table.num_rows, dtype=np.int64)
    return table.append_column(SEQUENCE, pa.array(sequence, pa.int64()))


def table_digest(table: pa.Table) -> str:
    """XXH3-128 of a table's Arrow IPC stream (columns, types and every value)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return xxhash.xxh3_128_hexdigest(sink.getvalue().to_pybytes())


def combined_digest(parts: list[tuple[int, str]]) -> str:
    digest = xxhash.xxh3_128()
    for rows, part_digest in parts:
        digest.update(f"{rows}:{part_digest};".encode())
    return digest.hexdigest()


# -- repeats: a shuffle on the id -----------------------------------------------------------------

def _id_words(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The first 16 hex digits of each id as an unsigned 64-bit number (partition key)."""
    return np.array([int(i[:16], 16) for i in ids.to_pylist()], dtype=np.uint64)


def map_ids(table: pa.Table, spec: dict[str, Any]) -> list[pa.Table]:
    partitions = spec["partitions"]
    owner = (_id_words(table.column("image_id")) % np.uint64(partitions)).astype(np.intp)
    keep = table.select(["image_id", SEQUENCE])
    return [keep.filter(pa.array(owner == p)) for p in range(partitions)]


def reduce_ids(tables: list[pa.Table], spec: dict[str, Any]) -> pa.Table:
    """``(_seq, occurrence)`` of every repeat in one partition (the first occurrence keeps its id)."""
    table = pa.concat_tables(tables) if tables else pa.table({"image_id": [], SEQUENCE: pa.array([], pa.int64())})
    counts = table.group_by("image_id").aggregate([(SEQUENCE, "count")])
    repeated = counts.filter(pc.greater(counts.column(f"{SEQUENCE}_count"), 1)).column("image_id")
    rows = table.filter(pc.is_in(table.column("image_id"), repeated)).sort_by([("image_id", "ascending"),
                                                                               (SEQUENCE, "ascending")])
    ids = np.asarray(rows.column("image_id").to_pylist(), dtype=object)
    if len(ids) == 0:
        return pa.table({SEQUENCE: pa.array([], pa.int64()), "occurrence": pa.array([], pa.int64())})
    starts = np.r_[True, ids[1:] != ids[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(ids)), 0))
    occurrence = np.arange(len(ids)) - group_start
    repeat = occurrence > 0
    return pa.table({SEQUENCE: rows.column(SEQUENCE).filter(pa.array(repeat)),
                     "occurrence": pa.array(occurrence[repeat], pa.int64())})


def renumber(table: pa.Table, repeats: pa.Table) -> pa.Table:
    """``table`` with the ids of its repeats (``(_seq, occurrence)``) replaced."""
    from ood_ray.io.sources import image_id_of

    if repeats.num_rows == 0:
        return table
    seq = table.column(SEQUENCE).to_numpy()
    order = np.argsort(repeats.column(SEQUENCE).to_numpy())
    repeat_seq = repeats.column(SEQUENCE).to_numpy()[order]
    repeat_occurrence = repeats.column("occurrence").to_numpy()[order]
    position = np.searchsorted(repeat_seq, seq)
    hit = (position < len(repeat_seq)) & (repeat_seq[np.minimum(position, len(repeat_seq) - 1)] == seq)
    ids = table.column("image_id").to_pylist()
    uris = table.column("uri").to_pylist()
    for row in np.flatnonzero(hit):
        ids[row] = image_id_of(uris[row], int(repeat_occurrence[position[row]]))
    return table.set_column(0, "image_id", pa.array(ids, pa.string()))


def fragment_repeats(repeats: pa.Table, fragment_index: int) -> pa.Table:
    seq = repeats.column(SEQUENCE).to_numpy()
    return repeats.filter(pa.array((seq >> 32) == fragment_index))


# -- the whole manifest --------------------------------------------------------------------------

class FragmentRunner:
    """Runs fragments and the repeats shuffle either in this process (:class:`LocalRunner`) or as
    Ray tasks writing the run's manifest parts (:class:`RayRunner`)."""

    def read(self, fragments: list[tuple[int, Fragment]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def repeats(self, parts: list[dict[str, Any]]) -> pa.Table:
        raise NotImplementedError

    def renumber(self, part: dict[str, Any], repeats: pa.Table) -> dict[str, Any]:
        raise NotImplementedError


def collect(config: AuditConfig, reserved: set[str], runner: FragmentRunner, cpus: float = 1.0
            ) -> tuple[list[dict[str, Any]], ListingReport]:
    """Every fragment read (links to folders entered one at a time, in path order, when their
    target was not listed), repeats renumbered: the fragments' results in manifest order (empty
    ones too) and the listing report."""
    kind, fragments = plan_fragments(config, reserved, cpus)
    results = runner.read(list(enumerate(fragments)))
    report = ListingReport()
    for result in results:
        report.merge(result["report"])
    if kind == "listing":
        visited = set().union(*(result["visited"] for result in results)) if results else set()
        pending = sorted((link for result in results for link in result["links"]), key=lambda link: link.path)
        while pending:
            link = pending.pop(0)
            if link.key in visited:
                report.skip_link(link.path, os.path.realpath(link.path))
                continue
            visited.add(link.key)
            fragments.append(Fragment("folder", link.path, parts=link.parts))
            [result] = runner.read([(len(fragments) - 1, fragments[-1])])
            results.append(result)
            report.merge(result["report"])
            visited |= result["visited"]
            pending = sorted([*pending, *result["links"]], key=lambda link: link.path)
        if report.links_skipped:
            log.info("listing %s: %d symbolic links to folders already listed were not followed (e.g. %s)",
                     config.source, report.links_skipped, report.examples[0])
    else:
        repeats = runner.repeats(results)
        if repeats.num_rows:
            log.info("manifest %s: %d rows repeat a URI named before (numbered repeats get their own ids)",
                     config.source, repeats.num_rows)
            results = [runner.renumber(result, repeats) if result["rows"] else result for result in results]
    return sorted(results, key=lambda result: result["index"]), report


def _result(index: int, fragment_result: FragmentResult, table_or_uri: Any, rows: int, digest: str) -> dict[str, Any]:
    return {"index": index, "data": table_or_uri, "rows": rows, "digest": digest, "report": fragment_result.report,
            "visited": fragment_result.visited, "links": fragment_result.links,
            "schema": fragment_result.table.schema}


class LocalRunner(FragmentRunner):
    """Everything in this process; ``data`` is the fragment's table (tests, ``ood-ray holdout``)."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config

    def read(self, fragments: list[tuple[int, Fragment]]) -> list[dict[str, Any]]:
        out = []
        for index, fragment in fragments:
            result = read_fragment(fragment, index, self.config)
            out.append(_result(index, result, result.table, result.table.num_rows, ""))
        return out

    def repeats(self, parts: list[dict[str, Any]]) -> pa.Table:
        return reduce_ids([p["data"].select(["image_id", SEQUENCE]) for p in parts], {})

    def renumber(self, part: dict[str, Any], repeats: pa.Table) -> dict[str, Any]:
        return {**part, "data": renumber(part["data"], fragment_repeats(repeats, part["index"]))}


def _fragment_task(index: int, fragment: Fragment, config: AuditConfig, out: str, run_id: str,
                   retry: storage.RetryPolicy) -> dict[str, Any]:
    from ood_ray.run.layout import RunLayout

    result = read_fragment(fragment, index, config)
    table = result.table
    uri = None
    if table.num_rows:
        uri = RunLayout(out, run_id).write_staged_part(MANIFEST_TABLE, f"{index:05d}", table, retry,
                                                       row_group_size=row_group_rows(config.io.rows_per_block))
    return _result(index, result, uri, table.num_rows, table_digest(table) if table.num_rows else "")


def _renumber_task(part: dict[str, Any], repeats: pa.Table, rows_per_block: int,
                   retry: storage.RetryPolicy) -> dict[str, Any]:
    table = renumber(storage.read_parquet(part["data"], None, retry), fragment_repeats(repeats, part["index"]))
    storage.write_parquet(part["data"], table, retry, row_group_size=row_group_rows(rows_per_block))
    return {**part, "digest": table_digest(table)}


class RayRunner(FragmentRunner):
    """Fragments as Ray tasks that write the run's ``manifest`` parts; ``data`` is the part's URI."""

    def __init__(self, config: AuditConfig, layout: Any, retry: storage.RetryPolicy) -> None:
        import ray

        self.config, self.layout, self.retry = config, layout, retry
        options = {"num_cpus": config.ray.task_num_cpus, "max_retries": -1}
        self.tasks = {fn: ray.remote(**options)(fn) for fn in (_fragment_task, _renumber_task)}

    # -- where the work runs (DriverRunner: in this process) ------------------------------------
    def _run(self, fn: Any, calls: list[tuple]) -> list[Any]:
        """``fn(*call)`` for every call, as Ray tasks; the results in order."""
        import ray

        return ray.get([self.tasks[fn].remote(*call) for call in calls])

    def _shared(self, value: Any) -> Any:
        """``value`` as every call receives it (one object-store copy)."""
        import ray

        return ray.put(value)

    def _parts(self, uris: list[str]) -> Any:
        from ood_ray.parts import RayParts

        return RayParts(uris, retry=self.retry, num_cpus=self.config.ray.task_num_cpus)

    # -- the work ---------------------------------------------------------------------------------
    def read(self, fragments: list[tuple[int, Fragment]]) -> list[dict[str, Any]]:
        config = self._shared(self.config)
        return self._run(_fragment_task, [(index, fragment, config, self.layout.out, self.layout.run_id, self.retry)
                                          for index, fragment in fragments])

    def repeats(self, parts: list[dict[str, Any]]) -> pa.Table:
        uris = [p["data"] for p in parts if p["rows"]]
        if not uris:
            return reduce_ids([], {})
        rows = sum(p["rows"] for p in parts)
        spec = {"partitions": max(1, min(64, -(-rows // 2_000_000)))}
        return pa.concat_tables(self._parts(uris).shuffle(map_ids, reduce_ids, spec, ["image_id", SEQUENCE]))

    def renumber(self, part: dict[str, Any], repeats: pa.Table) -> dict[str, Any]:
        mine = fragment_repeats(repeats, part["index"])
        if mine.num_rows == 0:
            return part
        [renumbered] = self._run(_renumber_task, [(part, mine, self.config.io.rows_per_block, self.retry)])
        return renumbered


class DriverRunner(RayRunner):
    """:class:`RayRunner`'s work in this process (a local run, :mod:`ood_ray.run.local`): the same
    manifest parts, written by the same functions."""

    def __init__(self, config: AuditConfig, layout: Any, retry: storage.RetryPolicy) -> None:
        self.config, self.layout, self.retry = config, layout, retry

    def _run(self, fn: Any, calls: list[tuple]) -> list[Any]:
        return [fn(*call) for call in calls]

    def _shared(self, value: Any) -> Any:
        return value

    def _parts(self, uris: list[str]) -> Any:
        from ood_ray.parts import InProcessParts

        return InProcessParts(uris, retry=self.retry, num_cpus=self.config.ray.task_num_cpus)


def count_at_most(config: AuditConfig, limit: int) -> int | None:
    """How many objects the source names, when that is at most ``limit`` (else None), found
    without reading more than ``limit + 1`` entries: a manifest's row count from its footers (a
    CSV's lines), a local folder's files; None for ``s3://`` sources."""
    source = config.source
    if storage.is_s3(source):
        return None
    files = [source] if is_manifest_file(source) else manifest_folder_files(source)
    if files is not None:
        total = 0
        for uri in files:
            fs, path = storage.resolve(uri)
            if uri.lower().endswith(".parquet"):
                with fs.open_input_file(path) as handle:
                    total += pq.ParquetFile(handle).metadata.num_rows
            else:
                with fs.open_input_stream(path, compression="detect") as stream:
                    while total <= limit + 1 and (chunk := stream.read(1 << 20)):
                        total += chunk.count(b"\n")
                total -= 1  # the header line
            if total > limit:
                return None
        return total
    count, pending = 0, [storage.local_path(storage.normalize_uri(source))]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        pending.append(entry.path)
                    else:
                        count += 1
                        if count > limit:
                            return None
        except OSError:
            continue
    return count


def build_inputs(config: AuditConfig, reserved: set[str], layout: Any, retry: storage.RetryPolicy,
                 row_output_bytes: int = 0, rows_per_block: int | None = None, local: bool = False) -> Inputs:
    """The run's manifest parts, made by Ray tasks (``local``: in this process, see
    :mod:`ood_ray.run.local`; see module docstring). Blocks hold
    ``rows_per_block`` rows (a resumed run passes the interrupted run's), else ``io.rows_per_block``,
    else as many as the work calls for (:mod:`ood_ray.io.block_size`; ``row_output_bytes``: the
    resized model inputs a row carries)."""
    from ood_ray.io.block_size import choose_rows_per_block

    if local:
        from ood_ray.io.memory import node_cpus

        cpus, runner = node_cpus(), DriverRunner(config, layout, retry)
    else:
        import ray

        cpus, runner = ray.cluster_resources().get("CPU", 1.0), RayRunner(config, layout, retry)
    parts, report = collect(config, reserved, runner, cpus)
    parts = [p for p in parts if p["rows"]]
    check_schemas(config.source, [p["schema"] for p in parts])
    digest = combined_digest([(p["rows"], p["digest"]) for p in parts])
    entries = [(p["data"], p["rows"]) for p in parts]
    if rows_per_block is None:
        rows_per_block = choose_rows_per_block(entries, config, retry, cpus, row_output_bytes)
    return Inputs(entries, digest, rows_per_block, report.to_dict())


def check_schemas(source: str, schemas: list[pa.Schema]) -> None:
    """Every part must have the same columns and types (a column typed differently in two CSV
    files, say, is refused with its name)."""
    if not schemas:
        return
    first = schemas[0]
    for schema in schemas[1:]:
        if schema.equals(first):
            continue
        for name in sorted(set(first.names) | set(schema.names)):
            a = first.field(name).type if name in first.names else None
            b = schema.field(name).type if name in schema.names else None
            if a != b:
                raise ConfigError(f"source={source!r}: manifest column {name!r} is {a} in one part and {b} in "
                                  "another; give every part the same columns and types")


def local_manifest(config: AuditConfig, reserved: set[str], report: dict | None = None) -> pa.Table:
    """The whole manifest as one table in this process (the same fragments and ids)."""
    parts, listing = collect(config, reserved, LocalRunner(config))
    if report is not None:
        report.update(listing.to_dict())
    check_schemas(config.source, [p["schema"] for p in parts if p["rows"]])
    table = pa.concat_tables([p["data"] for p in parts if p["rows"]] or [parts[0]["data"]])
    return table.drop_columns([SEQUENCE])
