"""The per-image pass, run inside Ray workers: fetch bytes, decode once, compute everything.

:func:`scan_batch` maps a block of manifest rows to a block of ``images`` rows plus per-channel
lists. It never raises for bad input: every row comes out with a ``status`` from
:data:`ood_ray.io.decode.STATUSES`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.io import storage
from ood_ray.io.decode import BAND_NAMES, MISSING, OK, UNDECODABLE, Decoded, decode_image, short_error
from ood_ray.stats.hashes import compute_hash_file
from ood_ray.stats.image import CHANNEL_STAT_NAMES, IMAGE_STAT_NAMES, compute_image_stats
from ood_ray.tables import CHANNEL_LIST_PREFIX, scan_schema


@dataclass(frozen=True)
class ScanSettings:
    """What a worker needs from the config (components get only their own part)."""

    max_pixels: int
    max_file_bytes: int
    fetch_threads: int
    per_channel_sharpness: bool


def _fetch(uri: str) -> tuple[bytes | None, str | None]:
    if not uri:
        return None, "empty uri"
    try:
        return storage.read_bytes(uri), None
    except Exception as exc:  # noqa: BLE001 - an unreadable object is a 'missing' row
        return None, short_error(exc)


def _empty_row() -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in IMAGE_STAT_NAMES}
    row.update(
        file_size=None, hash_file=None, status=None, error=None, format=None, mode=None, frames=None,
        hash_pixels=None, phash=None, dhash=None,
    )
    for name in CHANNEL_STAT_NAMES:
        row[f"{CHANNEL_LIST_PREFIX}{name}"] = None
    row[f"{CHANNEL_LIST_PREFIX}band"] = None
    return row


def scan_one(data: bytes | None, fetch_error: str | None, settings: ScanSettings) -> dict[str, Any]:
    """All scan columns for one object, given its bytes (or why they could not be read)."""
    row = _empty_row()
    if data is None:
        row.update(status=MISSING, error=fetch_error)
        return row
    row["file_size"] = len(data)
    row["hash_file"] = compute_hash_file(data)
    decoded: Decoded = decode_image(data, settings.max_pixels, settings.max_file_bytes)
    row.update(
        status=decoded.status, error=decoded.error, format=decoded.format, mode=decoded.mode,
        frames=decoded.frames, width=decoded.width, height=decoded.height,
    )
    if decoded.status != OK:
        return row
    try:
        stats = compute_image_stats(decoded.pixels, decoded.depth, settings.per_channel_sharpness)
    except Exception as exc:  # noqa: BLE001 - a statistic failing on one image is that row's error
        row.update(status=UNDECODABLE, error=f"statistics failed: {short_error(exc)}")
        return row
    row.update(stats.image)
    row.update(hash_pixels=stats.hash_pixels, phash=stats.phash, dhash=stats.dhash)
    for name, values in stats.channels.items():
        row[f"{CHANNEL_LIST_PREFIX}{name}"] = values
    row[f"{CHANNEL_LIST_PREFIX}band"] = list(BAND_NAMES[decoded.decoded_mode])
    return row


def scan_batch(batch: pa.Table, settings: ScanSettings, progress: Any = None) -> pa.Table:
    """Scan every row of a manifest block; returns the block with the scan columns appended."""
    started = time.perf_counter()
    uris = batch.column("uri").to_pylist()
    if settings.fetch_threads > 1 and len(uris) > 1:
        with ThreadPoolExecutor(max_workers=min(settings.fetch_threads, len(uris))) as pool:
            fetched = list(pool.map(_fetch, uris))
    else:
        fetched = [_fetch(uri) for uri in uris]
    fetch_seconds = time.perf_counter() - started

    rows = [scan_one(data, error, settings) for data, error in fetched]
    scan_seconds = time.perf_counter() - started - fetch_seconds

    schema = scan_schema(batch.schema)
    columns = [batch.column(name) for name in batch.column_names]
    for field in schema:
        if field.name in batch.column_names:
            continue
        columns.append(pa.array([row[field.name] for row in rows], type=field.type))
    out = pa.Table.from_arrays(columns, schema=schema)

    if progress is not None:
        statuses: dict[str, int] = {}
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        progress.add.remote(len(rows), statuses, fetch_seconds, scan_seconds)
    return out


def count_statuses(statuses: np.ndarray) -> dict[str, int]:
    """``{status: count}`` of an array of status strings."""
    values, counts = np.unique(statuses, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}
