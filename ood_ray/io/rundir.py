"""The run directory: Parquet tables committed by one ``run.json`` written last.

Layout of ``OUT`` (local path or ``s3://``)::

    OUT/run.json                       the commit: config, versions, counts, timings, thresholds,
                                       and the exact list of files of every table
    OUT/images/part-<run_id>-*.parquet
    OUT/channels/... OUT/duplicates/... OUT/lint/... OUT/embeddings/... OUT/predictions/...
    OUT/_staging/<run_id>/...          intermediate files of a run in progress (removed at commit)

Every file a run writes carries its ``run_id``. ``run.json`` is written last and atomically
(temp file + rename locally; one PUT on S3), so a reader sees either the previous committed run
or the new one, never a mix. After the commit, files under the table folders that ``run.json``
does not list (an earlier run's, or a crashed run's) are deleted, so a plain
``read_parquet('OUT/images/*.parquet')`` is also exact once a run has committed. A crash before the
commit leaves the previous run intact (its ``run.json`` still lists only its own files).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ood_ray.config import ConfigError
from ood_ray.io import storage

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
TABLES = ("images", "channels", "duplicates", "lint", "embeddings", "predictions", "neighbors", "duplicate_pairs",
          "evaluation", "clusters", "drift")
#: Folders of non-table files a run commits (saved FAISS shards), listed in ``run.json``.
ARTIFACT_DIRS = ("index", "detectors", "autoencoder")
STAGING = "_staging"


def new_run_id() -> str:
    """Sortable, unique: ``YYYYmmddTHHMMSS-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def read_run(out: str) -> dict[str, Any]:
    """The committed ``run.json`` of ``out``; :class:`FileNotFoundError` when none is committed."""
    uri = storage.join(out, RUN_FILE)
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{out}: no committed run ({RUN_FILE} not found)") from None


def table_files(out: str, run: dict[str, Any], table: str) -> list[str]:
    """Absolute URIs of the files of ``table`` in a committed run."""
    return [storage.join(out, table, name) for name in run["tables"].get(table, {}).get("files", [])]


def write_table(uri: str, table: pa.Table) -> None:
    """Write one Parquet file (zstd)."""
    fs, path = storage.resolve(uri)
    storage.make_parent_dirs(uri)
    pq.write_table(table, path, filesystem=fs, compression="zstd")


class RunDirectory:
    """Paths and the commit protocol of one run writing into ``out``."""

    def __init__(self, out: str, run_id: str | None = None) -> None:
        self.out = storage.normalize_uri(out)
        self.run_id = run_id or new_run_id()

    def check_writable(self, overwrite: bool) -> None:
        """Refuse to replace a committed run unless ``overwrite`` (raises :class:`ConfigError`)."""
        if storage.exists(storage.join(self.out, RUN_FILE)) and not overwrite:
            raise ConfigError(f"out={self.out!r}: already holds a committed run; pass --overwrite to replace it")
        if not storage.is_s3(self.out):
            storage.make_dirs(self.out)

    def table_dir(self, table: str) -> str:
        return storage.join(self.out, table)

    def part_uri(self, table: str, part: str) -> str:
        """URI of a new part file of ``table``: ``<table>/part-<run_id>-<part>.parquet``."""
        return storage.join(self.out, table, f"part-{self.run_id}-{part}.parquet")

    def write_part(self, table: str, part: str, data: pa.Table) -> str:
        uri = self.part_uri(table, part)
        write_table(uri, data)
        return uri

    def write_staged_part(self, table: str, part: str, data: pa.Table) -> str:
        """A part file of an intermediate table, under ``_staging/<run_id>/`` (never committed)."""
        uri = storage.join(self.out, STAGING, self.run_id, table, f"part-{part}.parquet")
        write_table(uri, data)
        return uri

    def commit(self, files: dict[str, list[tuple[str, int]]], run_info: dict[str, Any],
               artifacts: list[str] = ()) -> dict[str, Any]:
        """Write ``run.json`` (listing ``files``: ``{table: [(uri, rows)]}`` and the ``artifacts``),
        then clean up."""
        tables = {}
        for table, entries in files.items():
            names = sorted(uri.replace("\\", "/").rsplit("/", 1)[1] for uri, _ in entries)
            tables[table] = {"files": names, "rows": int(sum(rows for _, rows in entries))}
        run = {"run_id": self.run_id, "committed_at": datetime.now(timezone.utc).isoformat(), **run_info}
        run["tables"] = tables
        prefix = self.out.rstrip("/") + "/"
        run["artifacts"] = sorted(uri.removeprefix(prefix) for uri in artifacts)
        storage.write_bytes_atomic(storage.join(self.out, RUN_FILE), json.dumps(run, indent=2, default=str).encode())
        self._remove_uncommitted(tables, run["artifacts"])
        return run

    def annotate(self, key: str, value: Any) -> dict[str, Any]:
        """Record ``value`` under ``key`` in the committed ``run.json`` (atomic rewrite)."""
        run = read_run(self.out)
        run[key] = value
        storage.write_bytes_atomic(storage.join(self.out, RUN_FILE), json.dumps(run, indent=2, default=str).encode())
        return run

    def add_table(self, table: str, data: pa.Table, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add (or replace) one table of an already committed run: write its part file, then
        rewrite ``run.json`` atomically to list it, then delete the table's previous files."""
        run = read_run(self.out)
        uri = storage.join(self.out, table, f"part-{run['run_id']}-{table}-{uuid.uuid4().hex[:8]}.parquet")
        write_table(uri, data)
        run["tables"][table] = {"files": [uri.replace("\\", "/").rsplit("/", 1)[1]], "rows": data.num_rows}
        if info is not None:
            run[table] = info
        storage.write_bytes_atomic(storage.join(self.out, RUN_FILE), json.dumps(run, indent=2, default=str).encode())
        keep = set(run["tables"][table]["files"])
        storage.delete_files([u for u, _ in storage.list_files(self.table_dir(table))
                              if u.replace("\\", "/").rsplit("/", 1)[1] not in keep])
        return run

    def _remove_uncommitted(self, tables: dict[str, dict[str, Any]], artifacts: list[str]) -> None:
        stale = []
        keep_artifacts = {storage.join(self.out, name) for name in artifacts}
        for folder in ARTIFACT_DIRS:
            stale += [uri for uri, _ in storage.list_files(storage.join(self.out, folder)) if uri not in keep_artifacts]
        for table in set(TABLES) | set(tables):
            keep = set(tables.get(table, {}).get("files", []))
            for uri, _ in storage.list_files(self.table_dir(table)):
                if uri.replace("\\", "/").rsplit("/", 1)[1] not in keep:
                    stale.append(uri)
        if stale:
            log.info("removing %d files of earlier or failed runs from %s", len(stale), self.out)
            storage.delete_files(stale)
        storage.delete_tree(storage.join(self.out, STAGING))
