"""The autoencoder pass on the driver: reference pixels from the staged rows, Ray Train, threshold.

Reference rows (``ood.reference_split``, all ``ok`` rows without one) are split by a seeded hash of
``image_id``: nine tenths (at most ``autoencoder.max_train_images``) train the autoencoder, the
other tenth (at most ``ood.threshold_sample``) gives the threshold -- the
``ood.in_distribution_quantile`` of their ``score_recon`` -- so the fit does not lower it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_ray.autoencoder.model import load_autoencoder, reconstruction_error
from ood_ray.autoencoder.train import default_storage_path, train_autoencoder
from ood_ray.config import AuditConfig
from ood_ray.sampling import Sampler, hash_order
from ood_ray.columns import AUTOENCODER_PIXELS

log = logging.getLogger(__name__)


@dataclass
class AutoencoderFit:
    weights: bytes | None = None
    threshold: float | None = None
    report: dict[str, Any] = field(default_factory=dict)


def _pixels(sampler: Sampler, where: str, held_out: bool, limit: int, size: int, seed: int) -> np.ndarray:
    bucket = f"{hash_order(f'ae{int(seed)}')} % 10 {'=' if held_out else '<>'} 0"
    table = sampler.select([AUTOENCODER_PIXELS], f'{where} AND "{AUTOENCODER_PIXELS}" IS NOT NULL AND {bucket}',
                           hash_order(f"ae-order{int(seed)}"), limit)
    blobs = table.column(AUTOENCODER_PIXELS).to_pylist() if table.num_rows else []
    return np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), size, size, 3) if blobs else np.zeros((0, size, size, 3), np.uint8)


def fit_autoencoder(sampler: Sampler, where: str, config: AuditConfig, storage_path: str | None) -> AutoencoderFit:
    """Train on the reference images and set the ``score_recon`` threshold (see module docstring)."""
    ae = config.autoencoder
    train = _pixels(sampler, where, False, ae.max_train_images, ae.image_size, ae.seed)
    held = _pixels(sampler, where, True, config.ood.threshold_sample, ae.image_size, ae.seed)
    if len(train) == 0:
        train = held
    fit = AutoencoderFit()
    if len(train) == 0:
        log.info("score_recon skipped: no reference images")
        fit.report["skipped"] = "no reference images"
        return fit
    fit.weights, fit.report = train_autoencoder(train, ae, storage_path or ae.storage_path or default_storage_path())
    source = "held-out reference rows"
    if len(held) == 0:
        held, source = train, "the training images (no other reference rows)"
    scores = reconstruction_error(load_autoencoder(fit.weights, ae.latent_channels), held)
    fit.threshold = float(np.quantile(scores.astype(np.float64), config.ood.in_distribution_quantile))
    fit.report.update({"threshold": fit.threshold, "n_threshold": len(held), "threshold_from": source})
    return fit
