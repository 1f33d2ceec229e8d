"""Where a run writes, and how it commits: uncommitted parts never sit beside committed ones.

Layout of ``OUT`` (local path or ``s3://``)::

    OUT/run.json                    the committed run (config, versions, counts, timings, stage
                                    states, and the file list of every table)
    OUT/<table>/part-*.parquet      the committed tables (images, channels, ...)
    OUT/index/ detectors/ autoencoder/   the committed artifacts
    OUT/_lease.json                 who is writing into OUT now (:mod:`ood_ray.run.lease`)
    OUT/_runs/<run_id>/             everything a run writes before its commit: its tables, its
                                    artifacts, ``_staging/`` (intermediate files), ``_ledger/``
                                    (what is done: :mod:`ood_ray.run.ledger`) and its ``run.json``

**Local commit** (atomic for every table at once): ``OUT/current`` is a symbolic link to the
committed run's folder, and ``OUT/<table>``, ``OUT/index``, ... and ``OUT/run.json`` are fixed
links through it (``images -> current/images``). The commit writes the run's ``run.json`` into
its folder, then replaces ``current`` with one ``rename`` -- a reader of
``OUT/images/*.parquet`` sees the old run or the new one, never a mix and never a part of an
uncommitted run -- and then removes the folders of other runs.

**S3 commit** (no links on S3): the run's ``run.json`` is written into its folder (the intent),
its files are copied (server-side) into ``OUT/<table>/``, ``OUT/run.json`` is written (one PUT: the
commit point), then files no committed run lists are deleted. A driver killed between the copy
and the PUT leaves copies that no ``run.json`` lists: ``ood-ray query`` never reads them, a plain
glob over ``OUT/<table>/`` can see them until the next run or ``--resume`` removes them (a
resume rolls such a commit forward).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from ood_ray.config import ConfigError
from ood_ray.io import storage

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUNS = "_runs"
CURRENT = "current"
STAGING = "_staging"
LEDGER = "_ledger"
#: Folders of non-table files a run commits (saved FAISS shards, fitted detectors, the autoencoder).
ARTIFACT_DIRS = ("index", "detectors", "autoencoder")


def new_run_id() -> str:
    """Sortable, unique: ``YYYYmmddTHHMMSS-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def read_run(out: str) -> dict[str, Any]:
    """The committed ``run.json`` of ``out``; :class:`FileNotFoundError` when none is committed."""
    uri = storage.join(storage.normalize_uri(out), RUN_FILE)
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{out}: no committed run ({RUN_FILE} not found)") from None


def committed_reference_split(run: dict[str, Any]) -> str | None:
    """The split a committed run used as its reference (``ood.reference_split`` when the run had
    one), from its ``run.json``."""
    return run.get("stages", {}).get("scan", {}).get("state", {}).get("reference_split")


def table_files(out: str, run: dict[str, Any], table: str) -> list[str]:
    """Absolute URIs of the files of ``table`` in a committed run."""
    return [storage.join(out, table, name) for name in run["tables"].get(table, {}).get("files", [])]


def file_name(uri: str) -> str:
    return uri.replace("\\", "/").rsplit("/", 1)[1]


def _unlisted_table_files(base: str, run: dict[str, Any], tables: Any) -> list[str]:
    """The files under ``base/<table>/`` for each of ``tables`` that ``run`` does not list."""
    stale = []
    for table in tables:
        keep = set(run["tables"].get(table, {}).get("files", []))
        stale += [uri for uri, _ in storage.list_files(storage.join(base, table)) if file_name(uri) not in keep]
    return stale


def _dumps(run: dict[str, Any]) -> bytes:
    return json.dumps(run, indent=2, default=str).encode()


class RunLayout:
    """Paths and the commit protocol of one run writing into ``out`` (see module docstring)."""

    def __init__(self, out: str, run_id: str | None = None) -> None:
        self.out = storage.normalize_uri(out)
        self.run_id = run_id or new_run_id()
        self.is_s3 = storage.is_s3(self.out)

    # -- paths --------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """This run's folder: ``OUT/_runs/<run_id>``."""
        return storage.join(self.out, RUNS, self.run_id)

    @property
    def ledger_dir(self) -> str:
        return storage.join(self.root, LEDGER)

    def part_uri(self, table: str, part: str) -> str:
        """A new part file of ``table``: ``_runs/<run_id>/<table>/part-<run_id>-<part>.parquet``."""
        return storage.join(self.root, table, f"part-{self.run_id}-{part}.parquet")

    def staged_uri(self, table: str, part: str) -> str:
        """A part of an intermediate table (never committed)."""
        return storage.join(self.root, STAGING, table, f"part-{part}.parquet")

    def artifact_uri(self, relative: str) -> str:
        """Where this run writes an artifact (``index/...``, ``detectors/...``)."""
        return storage.join(self.root, relative)

    def work_dir(self, name: str) -> str:
        """A scratch folder of this run (Ray Train checkpoints, ...), removed at commit."""
        return storage.join(self.root, STAGING, name)

    def write_part(self, table: str, part: str, data: pa.Table, retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
                   compression: str = storage.KEPT_COMPRESSION) -> str:
        """A part of an output table (``compression``: lz4 for a part that compaction rewrites)."""
        uri = self.part_uri(table, part)
        storage.write_parquet(uri, data, retry, compression=compression)
        return uri

    def write_staged_part(self, table: str, part: str, data: pa.Table,
                          retry: storage.RetryPolicy = storage.DEFAULT_RETRY, row_group_size: int | None = None) -> str:
        """A part of an intermediate table, read once and never committed (lz4)."""
        uri = self.staged_uri(table, part)
        storage.write_parquet(uri, data, retry, row_group_size=row_group_size, compression=storage.WORK_COMPRESSION)
        return uri

    # -- before the run -----------------------------------------------------------------------
    def check_writable(self, overwrite: bool) -> None:
        """Refuse to replace a committed run unless ``overwrite`` (raises :class:`ConfigError`)."""
        if storage.exists(storage.join(self.out, RUN_FILE)) and not overwrite:
            raise ConfigError(f"out={self.out!r}: already holds a committed run; pass --overwrite to replace it")
        if not self.is_s3:
            storage.make_dirs(self.out)

    def run_ids(self) -> list[str]:
        """The runs with a folder under ``_runs`` (committed, interrupted or in progress)."""
        if self.is_s3:
            prefix = storage.join(self.out, RUNS) + "/"
            return sorted({uri[len(prefix):].split("/", 1)[0] for uri, _ in storage.list_files(storage.join(self.out, RUNS))})
        folder = os.path.join(self.out, RUNS)
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def committed_run_id(self) -> str | None:
        try:
            return read_run(self.out)["run_id"]
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def remove_other_runs(self, keep: tuple[str, ...] = ()) -> None:
        """Delete the folders of every run but this one, the committed one and ``keep``."""
        keep = {self.run_id, *keep}
        if not self.is_s3:
            committed = self.committed_run_id()
            keep.add(committed or "")
        for run_id in self.run_ids():
            if run_id not in keep:
                log.info("removing the files of run %s (not committed) from %s", run_id, self.out)
                storage.delete_tree(storage.join(self.out, RUNS, run_id))

    # -- commit -------------------------------------------------------------------------------
    def commit(self, files: dict[str, list[tuple[str, int]]], run_info: dict[str, Any], artifacts: list[str] = (),
               before_switch: Any = None) -> dict[str, Any]:
        """Commit the run: ``files`` (``{table: [(uri, rows)]}``, in this run's folder) and
        ``artifacts`` (URIs in this run's folder); ``before_switch()`` is called right before the
        switch (the lease re-check). Returns the committed ``run.json``."""
        tables = {table: {"files": sorted(file_name(uri) for uri, _ in entries), "rows": int(sum(r for _, r in entries))}
                  for table, entries in files.items()}
        prefix = self.root.rstrip("/") + "/"
        relative_artifacts = sorted(uri.removeprefix(prefix) for uri in artifacts)
        run = {"run_id": self.run_id, "committed_at": datetime.now(timezone.utc).isoformat(), **run_info,
               "tables": tables, "artifacts": relative_artifacts}
        storage.write_bytes_atomic(storage.join(self.root, RUN_FILE), _dumps(run))
        if before_switch is not None:
            before_switch()
        if self.is_s3:
            self._commit_s3(run)
        else:
            self._remove_unlisted_parts(run)
            self._commit_local(run)
        storage.delete_tree(storage.join(self.root, STAGING))
        return run

    def _remove_unlisted_parts(self, run: dict[str, Any]) -> None:
        """Delete the files of this run's table folders that ``run`` does not list (parts that
        were coalesced into others), so that a table's folder holds exactly its committed files."""
        stale = _unlisted_table_files(self.root, run, run["tables"])
        if stale:
            log.info("removing %d part files that were coalesced into others", len(stale))
            storage.delete_files(stale)

    def _commit_local(self, run: dict[str, Any]) -> None:
        out = self.out
        link = os.path.join(out, f".{CURRENT}-{uuid.uuid4().hex[:8]}")
        os.symlink(os.path.join(RUNS, self.run_id), link)
        for name in (*run["tables"], *ARTIFACT_DIRS, RUN_FILE):
            self._fixed_link(name)
        os.replace(link, os.path.join(out, CURRENT))  # the commit: one atomic rename
        self.remove_other_runs()

    def _fixed_link(self, name: str) -> None:
        """``OUT/<name> -> current/<name>``, replacing what an older layout left there."""
        path = os.path.join(self.out, name)
        target = os.path.join(CURRENT, name)
        if os.path.islink(path):
            if os.readlink(path) == target:
                return
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
        os.symlink(target, path)

    def _commit_s3(self, run: dict[str, Any]) -> None:
        for table, entry in run["tables"].items():
            for name in entry["files"]:
                storage.copy_file(storage.join(self.root, table, name), storage.join(self.out, table, name))
        for relative in run["artifacts"]:
            storage.copy_file(storage.join(self.root, relative), storage.join(self.out, relative))
        storage.write_bytes_atomic(storage.join(self.out, RUN_FILE), _dumps(run))  # the commit point
        self._remove_uncommitted_s3(run)
        self.remove_other_runs()
        storage.delete_tree(self.root)  # everything of it was copied out

    def _remove_uncommitted_s3(self, run: dict[str, Any]) -> None:
        """Delete the files under the table and artifact prefixes that ``run`` does not list."""
        from ood_ray.tables import TABLE_NAMES

        stale = []
        keep_artifacts = {storage.join(self.out, name) for name in run["artifacts"]}
        for folder in ARTIFACT_DIRS:
            stale += [uri for uri, _ in storage.list_files(storage.join(self.out, folder)) if uri not in keep_artifacts]
        stale += _unlisted_table_files(self.out, run, set(TABLE_NAMES) | set(run["tables"]))
        if stale:
            log.info("removing %d files that no committed run lists from %s", len(stale), self.out)
            storage.delete_files(stale)

    def roll_forward(self) -> bool:
        """Finish an S3 commit that a killed driver left half done (its ``run.json`` intent written,
        ``OUT/run.json`` not yet); local commits need nothing (the switch is one rename)."""
        if not self.is_s3:
            return False
        try:
            intent = json.loads(storage.read_bytes(storage.join(self.root, RUN_FILE)))
        except FileNotFoundError:
            return False
        if self.committed_run_id() == self.run_id:
            self._remove_uncommitted_s3(intent)
            return True
        log.info("finishing the commit of run %s that was interrupted", self.run_id)
        self._commit_s3(intent)
        return True

    def clean_committed_tables(self) -> None:
        """Remove from the table prefixes (S3) what the committed ``run.json`` does not list (the
        leftovers of a commit killed before its PUT)."""
        if not self.is_s3:
            return
        try:
            run = read_run(self.out)
        except FileNotFoundError:
            run = {"tables": {}, "artifacts": []}
        self._remove_uncommitted_s3(run)

    # -- changing a committed run -------------------------------------------------------------
    def _committed_root(self, run: dict[str, Any]) -> str:
        """Where the committed run's files are written (its folder locally, ``OUT`` on S3)."""
        return self.out if self.is_s3 else storage.join(self.out, RUNS, run["run_id"])

    def _rewrite_run(self, run: dict[str, Any]) -> None:
        storage.write_bytes_atomic(storage.join(self._committed_root(run), RUN_FILE), _dumps(run))

    def annotate(self, key: str, value: Any) -> dict[str, Any]:
        """Record ``value`` under ``key`` in the committed ``run.json`` (atomic rewrite)."""
        run = read_run(self.out)
        run[key] = value
        self._rewrite_run(run)
        return run

    def add_table(self, table: str, data: pa.Table, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add (or replace) one table of the committed run: its part file, then ``run.json``
        rewritten atomically to list it, then the table's previous files removed."""
        run = read_run(self.out)
        root = self._committed_root(run)
        name = f"part-{run['run_id']}-{table}-{uuid.uuid4().hex[:8]}.parquet"
        storage.write_parquet(storage.join(root, table, name), data)
        previous = run["tables"].get(table, {}).get("files", [])
        run["tables"][table] = {"files": [name], "rows": data.num_rows}
        if info is not None:
            run[table] = info
        if not self.is_s3:
            self._fixed_link(table)
        self._rewrite_run(run)
        storage.delete_files([storage.join(root, table, old) for old in previous if old != name])
        return run
