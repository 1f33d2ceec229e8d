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

Listing happens on the driver; for 10^7+ objects pass a manifest (listing a bucket of 10^8 keys
from one process does not scale, reading a Parquet manifest does).

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
from ood_ray.io.listing import ListingReport, list_entries
from ood_ray.columns import INPUT_ERROR

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".parquet", ".csv", ".csv.gz")


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


def list_folder(root: str, layout: str, extensions: list[str] | None) -> tuple[pa.Table, ListingReport]:
    """Manifest of every entry under a local folder or S3 prefix (see :mod:`ood_ray.io.listing`)."""
    root = storage.normalize_uri(root)
    entries, report = list_entries(root)
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
    log.info("listed %d objects under %s", len(uris), root)
    table = pa.table({
        "uri": pa.array(uris, pa.string()),
        "split": pa.array(splits, pa.string()),
        "label": pa.array(labels, pa.string()),
        "listed_size": pa.array(sizes, pa.int64()),
        INPUT_ERROR: pa.array(errors, pa.string()),
    })
    return table, report


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


def _read_manifest_table(path: str) -> pa.Table:
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


def read_manifest(path: str) -> pa.Table:
    """Read a Parquet/CSV manifest; resolve relative URIs; ``label``/``split`` as strings; cells that
    are not usable URIs keep a row and get the reason in the internal input-error column."""
    table = _read_manifest_table(path)
    if "uri" not in table.column_names:
        raise ConfigError(f"source={path!r}: manifest has no 'uri' column (columns: {', '.join(table.column_names)})")
    base = path.rsplit("/", 1)[0] if storage.is_s3(path) else os.path.dirname(storage.normalize_uri(path))
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


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(source)


def build_manifest(config: AuditConfig, reserved_columns: set[str], report: dict | None = None) -> pa.Table:
    """The manifest for ``config.source``: ``image_id``, ``uri``, ``split``, ``label``, extras.

    Raises :class:`ConfigError` when the source does not exist or cannot be read, or when a
    manifest column would collide with an output column. ``report`` (a dict) receives what the
    listing skipped.
    """
    source = config.source
    if is_manifest(source):
        if not storage.exists(source):
            raise ConfigError(f"source={source!r}: manifest file not found")
        table = read_manifest(source)
    else:
        if not storage.is_s3(source):
            if not os.path.isdir(source):
                raise ConfigError(f"source={source!r}: not a folder, s3:// prefix or manifest ({', '.join(MANIFEST_SUFFIXES)})")
            if not os.access(source, os.R_OK | os.X_OK):
                raise ConfigError(f"source={source!r}: the folder cannot be listed (permission denied)")
        table, listing = list_folder(source, config.io.layout, config.io.extensions)
        if report is not None:
            report.update(listing.to_dict())
    clashes = sorted((set(table.column_names) - {"uri", "label", "split", "listed_size", INPUT_ERROR}) & reserved_columns)
    if clashes:
        raise ConfigError(f"source={source!r}: manifest columns {clashes} collide with output columns; rename them")
    ids = compute_image_ids(table.column("uri").to_pylist())
    table = table.add_column(0, "image_id", pa.array(ids, pa.string()))
    if "listed_size" not in table.column_names:
        table = table.append_column("listed_size", pa.nulls(table.num_rows, pa.int64()))
    if INPUT_ERROR not in table.column_names:
        table = table.append_column(INPUT_ERROR, pa.nulls(table.num_rows, pa.string()))
    return table
