"""The per-image pass, run inside Ray workers: fetch bytes, decode once, compute everything.

:func:`scan_batch` maps a block of manifest rows to a block of ``images`` rows plus per-channel
lists. It never raises for bad input: every row comes out with a ``status`` from
:data:`ood_ray.io.decode.STATUSES`. Each decode is bounded (pixels and memory, checked from the
header: :mod:`ood_ray.io.decode`), and recorded in the block's journal
(:mod:`ood_ray.io.journal`) so that a row that kills its worker twice is given up on instead of
taking the block's other rows with it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.columns import AUTOENCODER_PIXELS, CHANNEL_LIST_PREFIX, FETCH_SECONDS, INPUT_ERROR, PIXELS_PREFIX, SCAN_SECONDS
from ood_ray.config import DEFAULT_CROP_SCALES, DEFAULT_NEAR_METHODS
from ood_ray.embed.preprocess import prepare_model_input
from ood_ray.io import storage
from ood_ray.io.decode import (
    BAND_NAMES,
    MISSING,
    OK,
    TOO_LARGE,
    UNDECODABLE,
    Decoded,
    DecodeLimits,
    decode_with_limits,
    short_error,
)
from ood_ray.io.journal import WORKER_DIED, DecodeJournal
from ood_ray.io.memory import default_decode_budget, tune_allocator
from ood_ray.lint.issues import ABSOLUTE_ISSUES, ISSUES, absolute_scores
from ood_ray.stats.centre import CROP_METHOD
from ood_ray.stats.d4 import d4_methods
from ood_ray.stats.hashes import compute_hash_file
from ood_ray.stats.image import (
    CHANNEL_STAT_NAMES,
    EXTRA_HASH_COLUMNS,
    IMAGE_STAT_NAMES,
    SMALL_IMAGE_PIXELS,
    StatsColumns,
    compute_images_stats,
)
from ood_ray.tables import scan_schema


#: The D4 hashes the default ``dedup.near_methods`` searches.
DEFAULT_D4_HASHES = d4_methods(DEFAULT_NEAR_METHODS)


@dataclass(frozen=True)
class ScanSettings:
    """What a worker needs from the config (components get only their own part)."""

    max_pixels: int
    max_file_bytes: int
    fetch_threads: int
    per_channel_sharpness: bool
    #: ``(key, timm data config)`` per distinct model preprocessing (see ood_ray.embed.preprocess).
    model_inputs: tuple[tuple[str, dict[str, Any]], ...] = ()
    #: Side ~ ``autoencoder.image_size`` of the autoencoder's input column (0: none).
    autoencoder_size: int = 0
    #: Memory one decode may need (``io.max_decode_bytes``); ``None``: derived on each worker node.
    max_decode_bytes: int | None = None
    #: Load every frame of animated and multi-page files (``io.check_all_frames``).
    all_frames: bool = True
    #: CPUs per scan task (how many tasks share a node's memory).
    task_num_cpus: float = 1.0
    #: The run's id, which names the blocks' decode journals ("" = no journal).
    run_id: str = ""
    #: Retries of transient object-store errors (``io.retry_*``).
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY
    #: The flip/rotation-invariant hashes to compute (those ``dedup.near_methods`` searches).
    d4_hashes: tuple[str, ...] = DEFAULT_D4_HASHES
    #: The centre scales of ``phash_crop`` (``dedup.crop_scales`` when ``dedup.near_methods`` searches it; empty: none).
    crop_scales: tuple[float, ...] = DEFAULT_CROP_SCALES if CROP_METHOD in DEFAULT_NEAR_METHODS else ()
    #: ``(issue, threshold)`` of the absolute named quality issues (empty: not computed).
    quality_thresholds: tuple[tuple[str, float], ...] = ()
    #: Freed memory the worker's allocator keeps (``io.malloc_retain_mb``; 0: glibc's defaults).
    malloc_retain_mb: int = 128

    @classmethod
    def from_config(cls, cfg: Any, model_inputs: tuple[tuple[str, dict[str, Any]], ...] = (), run_id: str = "",
                    retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> "ScanSettings":
        """The settings of an audit with config ``cfg`` (the scan stage's and ``bench_scan.py``'s)."""
        return cls(
            max_pixels=cfg.io.max_pixels, max_file_bytes=cfg.io.max_file_bytes, fetch_threads=cfg.io.fetch_threads,
            per_channel_sharpness=cfg.stats.per_channel_sharpness, model_inputs=model_inputs,
            autoencoder_size=cfg.autoencoder.image_size if cfg.autoencoder.enabled else 0,
            max_decode_bytes=cfg.io.max_decode_bytes, all_frames=cfg.io.check_all_frames,
            task_num_cpus=cfg.ray.task_num_cpus, run_id=run_id, retry=retry,
            d4_hashes=d4_methods(cfg.dedup.near_methods) if cfg.dedup.enabled else (),
            crop_scales=tuple(cfg.dedup.crop_scales) if cfg.dedup.enabled and CROP_METHOD in cfg.dedup.near_methods else (),
            quality_thresholds=tuple((name, cfg.quality.threshold(name)) for name in ABSOLUTE_ISSUES)
            if cfg.quality.enabled else (), malloc_retain_mb=cfg.io.malloc_retain_mb)

    def limits(self) -> DecodeLimits:
        """The decode limits on this worker (the memory budget resolved for its node)."""
        budget = self.max_decode_bytes
        if budget is None:
            budget = default_decode_budget(self.task_num_cpus)
        return DecodeLimits(self.max_pixels, self.max_file_bytes, budget, self.all_frames)

    def input_columns(self) -> list[tuple[str, dict[str, Any]]]:
        """``(column, data config)`` of every resized-pixel column the scan adds."""
        columns = [(f"{PIXELS_PREFIX}{key}", data_config) for key, data_config in self.model_inputs]
        if self.autoencoder_size:
            size = self.autoencoder_size
            columns.append((AUTOENCODER_PIXELS, {"input_size": (3, size, size), "interpolation": "bilinear",
                                                 "crop_pct": 1.0, "crop_mode": "center"}))
        return columns


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _fetch_pool(threads: int) -> ThreadPoolExecutor:
    """One reusable pool per worker process for concurrent object-store reads."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ood-ray-fetch")
    return _POOLS[threads]


def _fetch(uri: str, max_file_bytes: int, input_error: str | None = None,
           retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> tuple[bytes | None, str | None]:
    """Read at most ``max_file_bytes + 1`` bytes: a larger object is ``too_large`` without
    downloading all of it (the decoder sees the extra byte and refuses it). An entry that the
    listing or the manifest already found unreadable is not read at all."""
    if input_error is not None:
        return None, input_error
    if not uri:
        return None, "empty uri"
    try:
        return storage.read_bytes(uri, limit=max_file_bytes + 1, retry=retry), None
    except Exception as exc:  # noqa: BLE001 - an unreadable object is a 'missing' row
        return None, storage.read_error_text(exc)


#: Decoded pixel values held at once before their statistics are computed together: small enough
#: that a batch's arrays (and their float64 intermediates) stay in the CPU caches, large enough to
#: vectorise. Measured on CIFAR-10 JPEGs, one core, 1,024-row blocks: 2,380 images/s at 2**26 values
#: (the whole block in one batch), 2,790 at 2**21, 3,000 at 2**19 and 2**18, 2,800 at 2**16.
STATS_BUDGET_VALUES = 1 << 19

#: Columns known from the bytes and the header, for every row (``width``/``height`` also for
#: rows that fail after the header was read).
_META = ("file_size", "hash_file", "status", "error", "format", "mode", "frames", "width", "height")
_STATS = tuple(name for name in IMAGE_STAT_NAMES if name not in ("width", "height"))
_ISSUE_FLAGS = {ISSUES[name].flag_column for name in ABSOLUTE_ISSUES}


class ScanColumns:
    """The scan output of one block, column by column (filled row by row, then by groups)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.meta: dict[str, list[Any]] = {name: [None] * n for name in _META}
        self.valid = np.zeros(n, dtype=bool)
        self.stats: dict[str, np.ndarray] = {name: np.zeros(n) for name in _STATS}
        self.lists: dict[str, list[Any]] = {f"{CHANNEL_LIST_PREFIX}{name}": [None] * n for name in (*CHANNEL_STAT_NAMES, "band")}
        self.hashes: dict[str, list[Any]] = {name: [None] * n for name in ("hash_pixels", "phash", "dhash", *EXTRA_HASH_COLUMNS)}
        self.inputs: dict[str, list[Any]] = {}
        #: ``{score_<issue>: float64[n]}`` (NaN where not computed) and ``{is_<issue>: threshold}``
        self.quality: dict[str, np.ndarray] = {ISSUES[name].score_column: np.full(n, np.nan) for name in ABSOLUTE_ISSUES}
        self.quality_flags: dict[str, tuple[str, float]] = {}

    def fail(self, row: int, error: str) -> None:
        """Mark a decoded row as failed after all (its statistics become null)."""
        self.meta["status"][row], self.meta["error"][row] = UNDECODABLE, error
        self.valid[row] = False
        for group in (self.lists, self.hashes, self.inputs):
            for values in group.values():
                values[row] = None

    def set_stats(self, rows: list[int], columns: StatsColumns, decoded: list[Decoded],
                  quality_thresholds: tuple[tuple[str, float], ...] = ()) -> None:
        index = np.asarray(rows)
        self.valid[index] = True
        for name in _STATS:
            self.stats[name][index] = columns.image[name]
        if quality_thresholds and columns.quality:
            scores = absolute_scores({**columns.quality, "width": columns.image["width"], "height": columns.image["height"]})
            for name, threshold in quality_thresholds:
                issue = ISSUES[name]
                self.quality[issue.score_column][index] = scores[name]
                self.quality_flags[issue.flag_column] = (issue.score_column, threshold)
        for k, (row, image) in enumerate(zip(rows, decoded)):
            for name in CHANNEL_STAT_NAMES:
                self.lists[f"{CHANNEL_LIST_PREFIX}{name}"][row] = columns.channels[name][k]
            self.lists[f"{CHANNEL_LIST_PREFIX}band"][row] = BAND_NAMES[image.decoded_mode]
            self.hashes["hash_pixels"][row] = columns.hash_pixels[k]
            self.hashes["phash"][row] = columns.phash[k]
            self.hashes["dhash"][row] = columns.dhash[k]
            for name in EXTRA_HASH_COLUMNS:
                self.hashes[name][row] = columns.d4[name][k]

    def array(self, field: pa.Field) -> pa.Array:
        """The column ``field.name`` as an Arrow array of ``field.type`` (nulls where failed, and where
        a statistic or score could not be measured: NaN, e.g. ``noise_ratio`` under 3 x 3 pixels)."""
        measured = self.stats if field.name in self.stats else self.quality if field.name in self.quality else None
        if measured is not None:
            values = measured[field.name]
            if pa.types.is_integer(field.type):
                return pa.array(values.astype(np.int64), type=field.type, mask=~self.valid)
            return pa.array(values, type=field.type, mask=~self.valid | np.isnan(values))
        if field.name in _ISSUE_FLAGS:
            if field.name not in self.quality_flags:
                return pa.nulls(self.n, field.type)
            score_column, threshold = self.quality_flags[field.name]
            values = self.quality[score_column]
            return pa.array(values > threshold, type=field.type, mask=~self.valid | np.isnan(values))
        for group in (self.meta, self.lists, self.hashes, self.inputs):
            if field.name in group:
                return pa.array(group[field.name], type=field.type)
        raise KeyError(field.name)

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.meta["status"]:
            counts[status] = counts.get(status, 0) + 1
        return counts


def _decode_row(columns: ScanColumns, row: int, data: bytes | None, fetch_error: str | None,
                limits: DecodeLimits) -> Decoded | None:
    meta = columns.meta
    if data is None:
        meta["status"][row], meta["error"][row] = MISSING, fetch_error
        return None
    if len(data) > limits.max_file_bytes:
        # Only the first max_file_bytes + 1 bytes were read: neither size nor hash is known.
        meta["status"][row], meta["error"][row] = TOO_LARGE, f"more than max_file_bytes={limits.max_file_bytes} bytes"
        return None
    meta["file_size"][row] = len(data)
    meta["hash_file"][row] = compute_hash_file(data)
    decoded = decode_with_limits(data, limits)
    for name in ("status", "error", "format", "mode", "frames", "width", "height"):
        meta[name][row] = getattr(decoded, name)
    return decoded if decoded.status == OK else None


def _compute_pending(columns: ScanColumns, pending: list[tuple[int, Decoded]], settings: ScanSettings) -> None:
    """Statistics of the decoded images waiting in ``pending`` (grouped; see compute_images_stats)."""
    if not pending:
        return
    rows = [row for row, _ in pending]
    decoded = [d for _, d in pending]
    try:
        stats = compute_images_stats([d.pixels for d in decoded], [d.depth for d in decoded], settings.per_channel_sharpness,
                                     settings.d4_hashes, bool(settings.quality_thresholds), settings.crop_scales)
        columns.set_stats(rows, stats, decoded, settings.quality_thresholds)
    except Exception:  # noqa: BLE001 - find the image that failed, keep the others
        for row, image in pending:
            try:
                one = compute_images_stats([image.pixels], [image.depth], settings.per_channel_sharpness, settings.d4_hashes,
                                           bool(settings.quality_thresholds), settings.crop_scales)
                columns.set_stats([row], one, [image], settings.quality_thresholds)
            except Exception as exc:  # noqa: BLE001 - a statistic failing on one image is that row's error
                columns.fail(row, f"statistics failed: {short_error(exc)}")
    for name, data_config in settings.input_columns():
        values = columns.inputs.setdefault(name, [None] * columns.n)
        for row, image in pending:
            if columns.meta["status"][row] != OK:
                continue
            try:
                values[row] = prepare_model_input(image.pixels, data_config)
            except Exception as exc:  # noqa: BLE001 - one image the model cannot take is that row's error
                columns.fail(row, f"model input failed: {short_error(exc)}")
    pending.clear()


def scan_blobs(fetched: list[tuple[bytes | None, str | None]], settings: ScanSettings,
               journal: DecodeJournal | None = None) -> ScanColumns:
    """All scan columns for each object, given its bytes (or why they could not be read).

    Each object is decoded once. Small decoded images wait until :data:`STATS_BUDGET_VALUES`
    pixel values are held, then their statistics are computed together and the pixels released;
    a larger image gets its statistics at once, so that at most one large image is held and its
    decode and statistics are one step of the ``journal`` (see :mod:`ood_ray.io.journal`).
    The process's allocator is tuned first (``io.malloc_retain_mb``, once per process).
    """
    tune_allocator(settings.malloc_retain_mb)
    limits = settings.limits()
    columns = ScanColumns(len(fetched))
    for name, _ in settings.input_columns():
        columns.inputs[name] = [None] * columns.n
    pending: list[tuple[int, Decoded]] = []
    held = 0
    for row, (data, fetch_error) in enumerate(fetched):
        if journal is not None and not journal.begin(row):
            columns.meta["status"][row], columns.meta["error"][row] = UNDECODABLE, WORKER_DIED
            if data is not None and len(data) <= limits.max_file_bytes:
                columns.meta["file_size"][row] = len(data)
                columns.meta["hash_file"][row] = compute_hash_file(data)
            continue
        decoded = _decode_row(columns, row, data, fetch_error, limits)
        if decoded is not None:
            if decoded.pixels.shape[0] * decoded.pixels.shape[1] > SMALL_IMAGE_PIXELS:
                _compute_pending(columns, [(row, decoded)], settings)
            else:
                pending.append((row, decoded))
                held += decoded.pixels.size
        if journal is not None:
            journal.end(row)
        if held >= STATS_BUDGET_VALUES:
            _compute_pending(columns, pending, settings)
            held = 0
    _compute_pending(columns, pending, settings)
    return columns


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one block's scan (reference counting still frees
    every image as soon as it is done; cycles made meanwhile wait for the next collection). A Ray
    worker holds many long-lived objects, so each collection the scan's allocations trigger walks
    them all: with it paused the workers' own clock of the 50,000-file CIFAR scan went from
    20.9-21.0 s to 20.3 s (two alternated runs each)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def scan_batch(batch: pa.Table, settings: ScanSettings) -> pa.Table:
    """Scan every row of a manifest block; returns the block with the scan columns appended (and
    the block's worker seconds on its first row: ``_fetch_seconds``, ``_scan_seconds``)."""
    started = time.perf_counter()
    uris = batch.column("uri").to_pylist()
    errors = batch.column(INPUT_ERROR).to_pylist() if INPUT_ERROR in batch.column_names else [None] * len(uris)
    if settings.fetch_threads > 1 and len(uris) > 1 and any(storage.is_s3(uri) for uri in uris):
        fetched = list(_fetch_pool(settings.fetch_threads).map(
            lambda pair: _fetch(pair[0], settings.max_file_bytes, pair[1], settings.retry), zip(uris, errors)))
    else:
        # Local reads take microseconds: threads would only add contention.
        fetched = [_fetch(uri, settings.max_file_bytes, error) for uri, error in zip(uris, errors)]
    fetch_seconds = time.perf_counter() - started

    journal = DecodeJournal.open(settings.run_id, batch.column("image_id").to_pylist()) if settings.run_id else None
    with cyclic_gc_paused():
        scanned = scan_blobs(fetched, settings, journal)
    if journal is not None:
        journal.finish()
    scan_seconds = time.perf_counter() - started - fetch_seconds

    schema = scan_schema(batch.schema, [name for name, _ in settings.input_columns()])
    arrays = [batch.column(f.name) if f.name in batch.column_names else scanned.array(f) for f in schema]
    out = pa.Table.from_arrays(arrays, schema=schema)
    for name, seconds in ((FETCH_SECONDS, fetch_seconds), (SCAN_SECONDS, scan_seconds)):
        values = np.zeros(out.num_rows)
        values[:1] = seconds
        out = out.append_column(pa.field(name, pa.float64()), pa.array(values))
    return out
