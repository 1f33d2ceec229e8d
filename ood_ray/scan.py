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

import pyarrow as pa

from ood_ray.io import storage
from ood_ray.io.decode import BAND_NAMES, MISSING, OK, UNDECODABLE, Decoded, decode_image, short_error
from ood_ray.stats.hashes import compute_hash_file
from ood_ray.stats.image import CHANNEL_STAT_NAMES, IMAGE_STAT_NAMES, ImageStats, compute_images_stats
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


#: Decoded pixel values held at once before their statistics are computed (bounds worker memory).
STATS_BUDGET_VALUES = 1 << 26


def _decode_row(data: bytes | None, fetch_error: str | None, settings: ScanSettings) -> tuple[dict[str, Any], Decoded | None]:
    row = _empty_row()
    if data is None:
        row.update(status=MISSING, error=fetch_error)
        return row, None
    row["file_size"] = len(data)
    row["hash_file"] = compute_hash_file(data)
    decoded = decode_image(data, settings.max_pixels, settings.max_file_bytes)
    row.update(
        status=decoded.status, error=decoded.error, format=decoded.format, mode=decoded.mode,
        frames=decoded.frames, width=decoded.width, height=decoded.height,
    )
    return row, (decoded if decoded.status == OK else None)


def _fill_stats(row: dict[str, Any], stats: ImageStats, decoded: Decoded) -> None:
    row.update(stats.image)
    row.update(hash_pixels=stats.hash_pixels, phash=stats.phash, dhash=stats.dhash)
    for name, values in stats.channels.items():
        row[f"{CHANNEL_LIST_PREFIX}{name}"] = values
    row[f"{CHANNEL_LIST_PREFIX}band"] = list(BAND_NAMES[decoded.decoded_mode])


def _compute_pending(rows: list[dict[str, Any]], pending: list[tuple[int, Decoded]], settings: ScanSettings) -> None:
    """Statistics of the decoded images waiting in ``pending`` (grouped; see compute_images_stats)."""
    if not pending:
        return
    try:
        results = compute_images_stats([d.pixels for _, d in pending], [d.depth for _, d in pending],
                                       settings.per_channel_sharpness)
    except Exception:  # noqa: BLE001 - find the image that failed, keep the others
        results = []
        for index, decoded in pending:
            try:
                results.append(compute_images_stats([decoded.pixels], [decoded.depth], settings.per_channel_sharpness)[0])
            except Exception as exc:  # noqa: BLE001 - a statistic failing on one image is that row's error
                rows[index].update(status=UNDECODABLE, error=f"statistics failed: {short_error(exc)}")
                results.append(None)
    for (index, decoded), stats in zip(pending, results):
        if stats is not None:
            _fill_stats(rows[index], stats, decoded)
    pending.clear()


def scan_blobs(fetched: list[tuple[bytes | None, str | None]], settings: ScanSettings) -> list[dict[str, Any]]:
    """All scan columns for each object, given its bytes (or why they could not be read).

    Each object is decoded once; decoded images wait until :data:`STATS_BUDGET_VALUES` pixel
    values are held, then their statistics are computed together and the pixels released.
    """
    rows: list[dict[str, Any]] = []
    pending: list[tuple[int, Decoded]] = []
    held = 0
    for data, fetch_error in fetched:
        row, decoded = _decode_row(data, fetch_error, settings)
        rows.append(row)
        if decoded is not None:
            pending.append((len(rows) - 1, decoded))
            held += decoded.pixels.size
            if held >= STATS_BUDGET_VALUES:
                _compute_pending(rows, pending, settings)
                held = 0
    _compute_pending(rows, pending, settings)
    return rows


def scan_one(data: bytes | None, fetch_error: str | None, settings: ScanSettings) -> dict[str, Any]:
    """All scan columns for one object (see :func:`scan_blobs`)."""
    return scan_blobs([(data, fetch_error)], settings)[0]


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

    rows = scan_blobs(fetched, settings)
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
