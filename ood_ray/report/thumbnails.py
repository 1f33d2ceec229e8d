"""Thumbnails for the report, made by Ray tasks from the source URIs (local or ``s3://``).

Each task reads its objects (the run's ``io.max_file_bytes``), decodes them with the audit's own
guarded decoder (:func:`ood_ray.io.decode.decode_with_limits`: the run's ``max_pixels`` and
``max_decode_bytes``, first frame only, never raises) and returns a small JPEG per object, or why
there is none: a source that is gone, unreadable or undecodable comes back as ``missing`` with a
short error, and the report shows that instead of a broken image. The driver writes the JPEGs into
the report's ``thumbs/`` folder, so the tasks may run on any node of a cluster.

Display: 16-bit and float pixels are scaled to 0-255 (a float image by its own minimum and maximum),
grey stays grey, an alpha channel is composited on a mid-grey checker colour.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThumbnailRequest:
    """One thumbnail to make: ``key`` names the file (``thumbs/<key>.jpg``)."""

    key: str
    uri: str
    px: int


@dataclass(frozen=True)
class Thumbnail:
    """A made thumbnail (``data`` holds JPEG bytes) or why none could be made (``error``)."""

    key: str
    data: bytes | None
    error: str | None = None


def displayable(pixels: np.ndarray) -> "Image.Image":  # noqa: F821 - Pillow imported lazily
    """An ``(H, W, C)`` array of any depth as an 8-bit ``L`` or ``RGB`` Pillow image."""
    from PIL import Image

    array = pixels
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        if np.issubdtype(array.dtype, np.integer):
            top = float(np.iinfo(array.dtype).max)
            values = values / top * 255.0
        else:
            finite = values[np.isfinite(values)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            values = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / max(high - low, 1e-12) * 255.0
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    channels = array.shape[2]
    if channels in (2, 4):  # grey or colour with alpha: composite on mid-grey
        alpha = array[:, :, -1:].astype(np.float32) / 255.0
        colour = array[:, :, :-1].astype(np.float32)
        array = np.rint(colour * alpha + 128.0 * (1.0 - alpha)).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array[:, :, :3], mode="RGB")


def make_thumbnail(request: ThumbnailRequest, max_pixels: int, max_file_bytes: int | None,
                   max_decode_bytes: int | None) -> Thumbnail:
    """Read, decode and shrink one object; every failure is a :class:`Thumbnail` with an error."""
    from PIL import Image

    from ood_ray.io import storage
    from ood_ray.io.decode import DecodeLimits, decode_with_limits, short_error

    try:
        data = storage.read_bytes(request.uri, limit=max_file_bytes + 1 if max_file_bytes else None)
    except FileNotFoundError:
        return Thumbnail(request.key, None, "missing: the source is gone")
    except Exception as exc:  # noqa: BLE001 - an unreadable source is shown, never raised
        return Thumbnail(request.key, None, f"unreadable: {short_error(exc)}")
    decoded = decode_with_limits(data, DecodeLimits(max_pixels, max_file_bytes, max_decode_bytes, False))
    if decoded.pixels is None:
        return Thumbnail(request.key, None, f"{decoded.status}: {decoded.error}")
    try:
        image = displayable(decoded.pixels)
        image.thumbnail((request.px, request.px), Image.Resampling.LANCZOS if max(image.size) < 4 * request.px
                        else Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    except Exception as exc:  # noqa: BLE001
        return Thumbnail(request.key, None, f"undecodable: {short_error(exc)}")
    return Thumbnail(request.key, buffer.getvalue())


def _make_many(requests: list[ThumbnailRequest], limits: tuple[int, int | None, int | None]) -> list[Thumbnail]:
    return [make_thumbnail(request, *limits) for request in requests]


def make_thumbnails(requests: list[ThumbnailRequest], folder: str, limits: tuple[int, int | None, int | None],
                    rows_per_task: int) -> dict[str, Thumbnail]:
    """Make every requested thumbnail in Ray tasks of ``rows_per_task`` objects and write the
    JPEGs into ``folder``; returns ``{key: Thumbnail}`` (``data`` dropped once written)."""
    import ray

    unique = list({request.key: request for request in requests}.values())
    if not unique:
        return {}
    make = ray.remote(num_cpus=1, max_retries=3)(_make_many)
    chunks = [unique[i:i + rows_per_task] for i in range(0, len(unique), rows_per_task)]
    pending = [make.remote(chunk, limits) for chunk in chunks]
    os.makedirs(folder, exist_ok=True)
    made: dict[str, Thumbnail] = {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for thumbnail in ray.get(done[0]):
            if thumbnail.data is not None:
                with open(os.path.join(folder, f"{thumbnail.key}.jpg"), "wb") as handle:
                    handle.write(thumbnail.data)
            made[thumbnail.key] = Thumbnail(thumbnail.key, None, thumbnail.error)
    missing = sum(1 for t in made.values() if t.error)
    log.info("report: %d thumbnails in %d Ray tasks (%d without an image)", len(made), len(chunks), missing)
    return made
