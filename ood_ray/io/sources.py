"""Inputs -> manifest: one row per input object with a stable ``image_id``.

A SOURCE is one of

- a local folder or an ``s3://bucket/prefix``: every entry below it (see :mod:`ood_ray.io.listing`
  for what becomes an entry: regular files, and rows with a reason for what cannot be read or
  listed; hidden names skipped; ``io.extensions`` filters files by suffix). Layout (``io.layout``,
  default ``auto``): ``<split>/<label>/<file>`` gives ``split`` and ``label``; ``<label>/<file>``
  gives ``label``; ``auto`` decides per file from its depth (3+ parts: first is the split, parent is
  the label; 2 parts: parent is the label). Only ``/`` separates parts (a backslash is part of a name).
- a manifest file (``.parquet``, ``.csv`` or ``.csv.gz``) with a ``uri`` column and optional
  ``label`` and ``split``; every other column is carried into ``images``. Relative URIs are
  resolved against the manifest's folder. Labels are stored as strings. A cell that is not a
  usable URI (empty, a NUL byte, a number, an ``s3://`` URI that is not UTF-8) becomes a row with
  the reason; a local path that is not UTF-8 is kept as its ``file://`` percent-encoded URI.

An audit reads, lists and hashes its inputs in Ray tasks (:mod:`ood_ray.io.inputs`); the functions
here are what those tasks run on one fragment.

``image_id`` is the XXH3-128 of the canonical URI (32 hex characters): the same object gets the
same id in every run and from every kind of source. If a manifest names one URI ``k`` more times,
repeat ``j`` (1..k, in manifest order) hashes ``NUL j NUL uri`` instead (as does every URI that
holds a NUL byte itself). A usable URI never holds a NUL byte, so no repeat's id can equal the id of
a real URI (``m/a.png`` named twice and a file literally named ``m/a.png#1`` keep three ids).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xxhash

from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage
from ood_ray.columns import INPUT_ERROR

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".parquet", ".csv", ".csv.gz")
#: Columns a manifest may hold that the audit itself reads (any other is carried into ``images``).
MANIFEST_OWN_COLUMNS = {"uri", "label", "split", "listed_size", INPUT_ERROR}


def image_id_of(uri: str, occurrence: int = 0) -> str:
    """XXH3-128 of the URI; an injective encoding of ``(uri, occurrence)`` for repeats and for
    URIs holding a NUL byte (see module docstring)."""
    if occurrence == 0 and "\x00" not in uri:
        key = uri.encode("utf-8", "surrogatepass")
    else:
        key = b"\x00" + str(occurrence).encode() + b"\x00" + uri.encode("utf-8", "surrogatepass")
    return xxhash.xxh3_128_hexdigest(key)


def compute_image_ids(uris: list[str]) -> list[str]:
    """Stable ids: XXH3-128 of each URI, repeats disambiguated by occurrence (see module doc)."""
    seen: Counter[str] = Counter()
    ids = []
    for uri in uris:
        ids.append(image_id_of(uri, seen[uri]))
        seen[uri] += 1
    return ids


def _split_label(parts: tuple[str, ...], layout: str) -> tuple[str | None, str | None]:
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


def listing_table(entries: list, layout: str, extensions: list[str] | None) -> pa.Table:
    """Manifest rows of listed entries (hidden names and unwanted suffixes left out)."""
    wanted = tuple(e.lower() for e in extensions) if extensions else None
    uris, splits, labels, sizes, errors = [], [], [], [], []
    for entry in entries:
        if any(part.startswith(".") for part in entry.parts):
            continue
        if wanted and not entry.is_folder and not entry.parts[-1].lower().endswith(wanted):
            continue
        split, label = (None, None) if entry.is_folder else _split_label(entry.parts, layout)
        uris.append(entry.uri)
        splits.append(split)
        labels.append(label)
        sizes.append(entry.size)
        errors.append(entry.error)
    return pa.table({
        "uri": pa.array(uris, pa.string()),
        "split": pa.array(splits, pa.string()),
        "label": pa.array(labels, pa.string()),
        "listed_size": pa.array(sizes, pa.int64()),
        INPUT_ERROR: pa.array(errors, pa.string()),
    })


def _text_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column with every cell valid UTF-8 (undecodable bytes written as ``\\xNN``)."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.chunked_array([pa.array([None if v is None else v.decode("utf-8", "backslashreplace")
                                           for v in column.to_pylist()], pa.string())], pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column.cast(pa.string())
    chunks = []
    for chunk in column.chunks:
        try:
            chunk.validate(full=True)
            chunks.append(chunk.cast(pa.string()))
        except pa.ArrowInvalid:
            raw = chunk.view(pa.binary() if pa.types.is_string(chunk.type) else pa.large_binary()).to_pylist()
            chunks.append(pa.array([None if v is None else v.decode("utf-8", "backslashreplace") for v in raw], pa.string()))
    return pa.chunked_array(chunks, pa.string())


def _raw_cells(column: pa.ChunkedArray) -> list[Any]:
    """The cells of the ``uri`` column as Python values: ``str`` for valid UTF-8, ``bytes`` for
    text that is not, and whatever a non-text column holds."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        cells: list[Any] = []
        for chunk in column.chunks:
            try:
                chunk.validate(full=True)
                cells += chunk.to_pylist()
            except pa.ArrowInvalid:
                binary = pa.binary() if pa.types.is_string(chunk.type) else pa.large_binary()
                for value in chunk.view(binary).to_pylist():
                    try:
                        cells.append(None if value is None else value.decode("utf-8"))
                    except UnicodeDecodeError:
                        cells.append(value)
        return cells
    return column.to_pylist()


def resolve_manifest_uri(cell: Any, base: str) -> tuple[str, str | None]:
    """``(canonical uri, reason it cannot be read or None)`` for one ``uri`` cell of a manifest."""
    if cell is None or (isinstance(cell, (str, bytes)) and not cell.strip()):
        return "", "empty uri"
    if isinstance(cell, bytes):
        if cell.startswith(b"s3://"):
            return cell.decode("utf-8", "backslashreplace"), "uri is not valid UTF-8 (S3 keys are UTF-8)"
        cell = os.fsdecode(cell)  # a local path: its bytes are kept (see storage.local_uri)
    elif not isinstance(cell, str):
        return str(cell), f"uri is a {type(cell).__name__} value ({cell!r}), not a path or URI"
    if "\x00" in cell:
        return cell, "uri contains a NUL byte"
    try:
        if storage.is_s3(cell) or os.path.isabs(cell) or cell.startswith(storage.FILE_SCHEME):
            return storage.normalize_uri(cell), None
        if storage.is_s3(base):
            return storage.join(base, cell), None
        return storage.normalize_uri(os.path.join(storage.local_path(base), cell)), None
    except (ValueError, OSError) as exc:
        return storage.display_text(cell), f"unusable uri: {exc}"


def read_manifest_file(path: str) -> pa.Table:
    """A whole manifest file (Parquet, or CSV with ``uri``/``label``/``split`` read as text)."""
    fs, fs_path = storage.resolve(path)
    try:
        if path.lower().endswith(".parquet"):
            return pq.read_table(fs_path, filesystem=fs)
        with fs.open_input_stream(fs_path, compression="detect") as stream:
            # uri/label/split as text exactly as written ("0001" stays "0001"); bytes that are not
            # UTF-8 are accepted here and handled per cell.
            convert = pacsv.ConvertOptions(column_types={"uri": pa.string(), "label": pa.string(), "split": pa.string()},
                                           check_utf8=False)
            return pacsv.read_csv(stream, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"source={path!r}: cannot read the manifest: {str(exc).splitlines()[0]}") from None


def normalize_manifest(table: pa.Table, path: str, base: str) -> pa.Table:
    """Resolve relative URIs against ``base``; ``label``/``split`` as strings; cells that are not
    usable URIs keep a row and get the reason in the internal input-error column."""
    if "uri" not in table.column_names:
        raise ConfigError(f"source={path!r}: manifest has no 'uri' column (columns: {', '.join(table.column_names)})")
    resolved = [resolve_manifest_uri(cell, base) for cell in _raw_cells(table.column("uri"))]
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array([u for u, _ in resolved], pa.string()))
    for index, name in enumerate(table.column_names):
        column = table.column(name)
        if name != "uri" and (name in ("label", "split") or pa.types.is_string(column.type)
                              or pa.types.is_large_string(column.type) or pa.types.is_binary(column.type)):
            table = table.set_column(index, name, _text_column(column))
    for name in ("label", "split"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    errors = [error for _, error in resolved]
    bad = sum(error is not None for error in errors)
    if bad:
        log.warning("manifest %s: %d rows have no usable uri (they become 'missing' rows with the reason)", path, bad)
    return table.append_column(INPUT_ERROR, pa.array(errors, pa.string()))


def read_manifest(path: str) -> pa.Table:
    """Read a Parquet/CSV manifest in this process (see :func:`normalize_manifest`)."""
    base = path.rsplit("/", 1)[0] if storage.is_s3(path) else os.path.dirname(storage.normalize_uri(path))
    return normalize_manifest(read_manifest_file(path), path, base)


def build_manifest(config: AuditConfig, reserved_columns: set[str], report: dict | None = None) -> pa.Table:
    """The whole manifest for ``config.source`` as one table in this process: ``image_id``,
    ``uri``, ``split``, ``label``, extras -- the same fragments, URIs and ids as the run's manifest
    parts (:mod:`ood_ray.io.inputs`), for ``ood-ray holdout`` and tests.

    Raises :class:`ConfigError` when the source does not exist or cannot be read, or when a
    manifest column would collide with an output column. ``report`` (a dict) receives what the
    listing skipped.
    """
    from ood_ray.io.inputs import local_manifest

    return local_manifest(config, reserved_columns, report)
