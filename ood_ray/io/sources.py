"""Inputs -> manifest: one row per input object with a stable ``image_id``.

A SOURCE is one of

- a local folder or an ``s3://bucket/prefix``: every regular file below it (hidden files and
  folders skipped; ``io.extensions`` filters by suffix). Layout (``io.layout``, default ``auto``):
  ``<split>/<label>/<file>`` gives ``split`` and ``label``; ``<label>/<file>`` gives ``label``;
  ``auto`` decides per file from its depth (3+ parts: first is the split, parent is the label;
  2 parts: parent is the label).
- a manifest file (``.parquet``, ``.csv`` or ``.csv.gz``) with a ``uri`` column and optional
  ``label`` and ``split``; every other column is carried into ``images``. Relative URIs are
  resolved against the manifest's folder. Labels are stored as strings.

Listing happens on the driver; for 10^7+ objects pass a manifest (listing a bucket of 10^8 keys
from one process does not scale, reading a Parquet manifest does).

``image_id`` is the XXH3-128 of the canonical URI (32 hex characters): the same object gets the
same id in every run and from every kind of source. If a manifest names one URI ``k`` more times,
the repeats get ``hash(uri + "#1")`` ... ``hash(uri + "#k")`` in manifest order, so rows out still
equal rows in.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xxhash

from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def compute_image_ids(uris: list[str]) -> list[str]:
    """Stable ids: XXH3-128 of each URI, repeats disambiguated by occurrence (see module doc)."""
    seen: Counter[str] = Counter()
    ids = []
    for uri in uris:
        k = seen[uri]
        seen[uri] += 1
        ids.append(xxhash.xxh3_128_hexdigest((uri if k == 0 else f"{uri}#{k}").encode()))
    return ids


def _split_label(relative: str, layout: str) -> tuple[str | None, str | None]:
    parts = relative.replace("\\", "/").split("/")
    depth = len(parts)
    if layout == "flat":
        return None, None
    if layout == "label":
        return None, (parts[-2] if depth >= 2 else None)
    if layout == "split/label":
        return (parts[0] if depth >= 3 else None), (parts[-2] if depth >= 2 else None)
    if depth >= 3:
        return parts[0], parts[-2]
    if depth == 2:
        return None, parts[0]
    return None, None


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.replace("\\", "/").split("/"))


def list_folder(root: str, layout: str, extensions: list[str] | None) -> pa.Table:
    """Manifest of every file under a local folder or S3 prefix."""
    root = storage.normalize_uri(root)
    files = storage.list_files(root)
    prefix = root.rstrip("/") + "/"
    wanted = tuple(e.lower() for e in extensions) if extensions else None
    uris, splits, labels, sizes = [], [], [], []
    for uri, size in files:
        relative = uri[len(prefix) :] if uri.startswith(prefix) else os.path.relpath(uri, root)
        if _is_hidden(relative):
            continue
        if wanted and not relative.lower().endswith(wanted):
            continue
        split, label = _split_label(relative, layout)
        uris.append(uri)
        splits.append(split)
        labels.append(label)
        sizes.append(size)
    log.info("listed %d objects under %s", len(uris), root)
    return pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "split": pa.array(splits, pa.string()),
            "label": pa.array(labels, pa.string()),
            "listed_size": pa.array(sizes, pa.int64()),
        }
    )


def read_manifest(path: str) -> pa.Table:
    """Read a Parquet/CSV manifest; resolve relative URIs; ``label``/``split`` as strings."""
    fs, fs_path = storage.resolve(path)
    if path.endswith(".parquet"):
        table = pq.read_table(fs_path, filesystem=fs)
    else:
        with fs.open_input_stream(fs_path, compression="detect") as stream:
            table = pacsv.read_csv(stream)
    if "uri" not in table.column_names:
        raise ConfigError(f"source={path!r}: manifest has no 'uri' column (columns: {', '.join(table.column_names)})")
    base = path.rsplit("/", 1)[0] if storage.is_s3(path) else os.path.dirname(storage.normalize_uri(path))
    uris = []
    for uri in table.column("uri").to_pylist():
        if uri is None:
            uris.append("")
        elif storage.is_s3(uri) or os.path.isabs(uri) or uri.startswith("file://"):
            uris.append(storage.normalize_uri(uri))
        else:
            uris.append(storage.normalize_uri(storage.join(base, uri)))
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
    for name in ("label", "split"):
        if name in table.column_names:
            column = table.column(name).cast(pa.string())
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(source)


def build_manifest(config: AuditConfig, reserved_columns: set[str]) -> pa.Table:
    """The manifest for ``config.source``: ``image_id``, ``uri``, ``split``, ``label``, extras.

    Raises :class:`ConfigError` when the source does not exist, or when a manifest column would
    collide with an output column.
    """
    source = config.source
    if is_manifest(source):
        if not storage.exists(source):
            raise ConfigError(f"source={source!r}: manifest file not found")
        table = read_manifest(source)
    else:
        if not storage.is_s3(source) and not os.path.isdir(source):
            raise ConfigError(f"source={source!r}: not a folder, s3:// prefix or manifest ({', '.join(MANIFEST_SUFFIXES)})")
        table = list_folder(source, config.io.layout, config.io.extensions)
    clashes = sorted((set(table.column_names) - {"uri", "label", "split", "listed_size"}) & reserved_columns)
    if clashes:
        raise ConfigError(f"source={source!r}: manifest columns {clashes} collide with output columns; rename them")
    ids = compute_image_ids(table.column("uri").to_pylist())
    table = table.add_column(0, "image_id", pa.array(ids, pa.string()))
    if "listed_size" not in table.column_names:
        table = table.append_column("listed_size", pa.nulls(table.num_rows, pa.int64()))
    return table
