"""The images of a fine-tuning run, read and decoded through the audit's safe path.

A source is anything an audit reads (folder, ``s3://`` prefix, manifest); its manifest is built as
the audit builds it (:func:`ood_ray.io.sources.build_manifest`), filtered (split, held-out classes,
labels), capped at ``finetune.max_images`` rows (a seeded sample), and decoded by Ray Data tasks:
each object is fetched with the audit's retries and decoded by
:func:`ood_ray.io.decode.decode_with_limits` under the audit's limits (a hostile file is a status,
never an exception), then resized and cropped to the model's input exactly as the embedding stage
does (:func:`ood_ray.embed.preprocess.prepare_model_input`). What did not decode is counted by
status and skipped. The images come back in ``uri`` order (the same arrays in every run, which a
resumed fine-tune relies on).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.io import storage
from ood_ray.io.decode import OK, DecodeLimits, decode_with_limits

log = logging.getLogger(__name__)

#: Statuses of rows that never reach the decoder.
UNLABELLED = "unlabelled"
OVER_MAX = "over_max_images"


@dataclass
class ImageSet:
    """Decoded images at the model's input size and their labels, with what was skipped."""

    pixels: np.ndarray
    labels: list[str | None]
    uris: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.uris)


def decode_rows(batch: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """One Ray Data task: ``uri`` -> ``status``, ``error``, ``pixels`` (model-input bytes or null)."""
    from ood_ray.embed.preprocess import prepare_model_input

    limits: DecodeLimits = spec["limits"]
    statuses, errors, pixels = [], [], []
    for uri in batch.column("uri").to_pylist():
        try:
            data = storage.read_bytes(uri, limits.max_file_bytes + 1 if limits.max_file_bytes else None, spec["retry"])
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable object is a row, not a crash
            statuses.append("missing")
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            pixels.append(None)
            continue
        if limits.max_file_bytes and len(data) > limits.max_file_bytes:
            statuses.append("too_large")
            errors.append(f"more than max_file_bytes={limits.max_file_bytes} bytes")
            pixels.append(None)
            continue
        decoded = decode_with_limits(data, limits)
        if decoded.status != OK:
            statuses.append(decoded.status)
            errors.append(decoded.error)
            pixels.append(None)
            continue
        try:
            pixels.append(prepare_model_input(decoded.pixels, spec["data_config"]))
            statuses.append(OK)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001
            statuses.append("unreadable")
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            pixels.append(None)
    return batch.append_column("status", pa.array(statuses, pa.string())).append_column(
        "error", pa.array(errors, pa.string())).append_column("pixels", pa.array(pixels, pa.binary()))


def select_rows(manifest: pa.Table, split: str | None, exclude_labels: list[str], need_labels: bool,
                max_images: int, seed: int) -> tuple[pa.Table, dict[str, int]]:
    """The manifest rows to decode and the counts of those left out (by reason)."""
    counts: dict[str, int] = {}
    if split is not None and "split" in manifest.column_names:
        manifest = manifest.filter(pc.fill_null(pc.equal(manifest.column("split"), split), False))
    if exclude_labels:
        manifest = manifest.filter(pc.invert(pc.fill_null(pc.is_in(manifest.column("label"), pa.array(exclude_labels, pa.string())), False)))
    if need_labels:
        labelled = pc.is_valid(manifest.column("label"))
        counts[UNLABELLED] = manifest.num_rows - int(pc.sum(labelled).as_py() or 0)
        manifest = manifest.filter(labelled)
    if manifest.num_rows > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(manifest.num_rows, max_images, replace=False))
        counts[OVER_MAX] = manifest.num_rows - max_images
        manifest = manifest.take(pa.array(keep))
    return manifest, {k: v for k, v in counts.items() if v}


def load_images(source: str, config: Any, data_config: dict[str, Any], split: str | None = None,
                exclude_labels: list[str] | None = None, need_labels: bool = False) -> ImageSet:
    """``source`` decoded for the model (module docstring); ``config`` is the run's
    :class:`ood_ray.config.AuditConfig` (its ``io`` limits and retries, ``finetune.max_images``)."""
    import ray

    from ood_ray.io.sources import build_manifest
    from ood_ray.tables import RESERVED_COLUMNS

    manifest = build_manifest(dataclasses.replace(config, source=source), RESERVED_COLUMNS)
    manifest = manifest.select([c for c in ("uri", "split", "label") if c in manifest.column_names])
    if "label" not in manifest.column_names:
        manifest = manifest.append_column("label", pa.nulls(manifest.num_rows, pa.string()))
    listed = manifest.num_rows
    manifest, counts = select_rows(manifest, split, exclude_labels or [], need_labels, config.finetune.max_images,
                                   config.finetune.seed)
    io = config.io
    spec = {"limits": DecodeLimits(io.max_pixels, io.max_file_bytes, io.max_decode_bytes, io.check_all_frames),
            "retry": storage.RetryPolicy(io.retry_attempts, io.retry_base_delay_s, io.retry_max_delay_s),
            "data_config": data_config}
    if manifest.num_rows == 0:
        decoded = pa.table({"uri": pa.array([], pa.string()), "label": pa.array([], pa.string()),
                            "status": pa.array([], pa.string()), "error": pa.array([], pa.string()),
                            "pixels": pa.array([], pa.binary())})
    else:
        dataset = ray.data.from_arrow(manifest.select(["uri", "label"])).map_batches(
            decode_rows, batch_size=64, batch_format="pyarrow", fn_kwargs={"spec": spec}, num_cpus=config.ray.task_num_cpus)
        decoded = pa.concat_tables(list(dataset.iter_batches(batch_size=None, batch_format="pyarrow")))
    decoded = decoded.sort_by("uri")
    for status in decoded.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    ok = decoded.filter(pc.equal(decoded.column("status"), OK))
    _, height, width = data_config["input_size"]
    pixels = np.frombuffer(b"".join(ok.column("pixels").to_pylist()), np.uint8).reshape(ok.num_rows, height, width, 3)
    bad = {k: v for k, v in counts.items() if k != OK}
    log.info("%s: %d objects listed, %d decoded%s", source, listed, ok.num_rows,
             f", skipped {bad}" if bad else "")
    return ImageSet(pixels.copy(), ok.column("label").to_pylist(), ok.column("uri").to_pylist(), counts)
