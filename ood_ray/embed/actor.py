"""The embedding stage: a callable class run by a Ray Data actor pool.

Each actor loads every model once (``__init__``), on CUDA when the actor was given a GPU, else on
CPU with torch's threads set to the actor's CPUs. ``__call__`` takes a block of scan rows with
model-ready pixels (``_px_<key>`` uint8 bytes, from :mod:`ood_ray.embed.preprocess`) and adds,
per model ``<alias>``:

- ``_emb_<alias>``: the pooled penultimate embedding (``float32[D]``; null for rows that did not
  decode), written to ``embeddings`` by the finalize pass;
- for classifiers, ``_prob_<alias>`` and ``_logit_<alias>`` (softmax and logits, when
  ``C <= max_full_probabilities``),
  ``_topk_class_<alias>``/``_topk_prob_<alias>``, written to ``predictions``; and the logit scores
  ``score_<detector>_<alias>`` of :data:`ood_ray.detectors.LOGIT_DETECTORS`;
- across two or more classifiers with one class count: ``score_ensemble_entropy`` and
  ``score_mutual_information``.

The pixel columns are dropped: they never reach storage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.columns import (
    EMBED_IDLE_SECONDS,
    EMBED_SECONDS,
    EMBEDDING_PREFIX,
    LOGITS_PREFIX,
    PIXELS_PREFIX,
    PROBABILITIES_PREFIX,
    TOPK_CLASS_PREFIX,
    TOPK_PROB_PREFIX,
    score_column,
)
from ood_ray.detectors import ENSEMBLE_DETECTORS, LOGIT_DETECTORS, REGISTRY
from ood_ray.detectors.base import softmax
from ood_ray.embed.models import ModelInfo, build_model, embed_and_logits
from ood_ray.embed.preprocess import normalize_batch, preprocessing_key

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EmbedSettings:
    top_k: int
    max_full_probabilities: int
    num_cpus: float
    num_gpus: float
    precision: str = "fp32"


def ensemble_members(infos: list[ModelInfo]) -> list[ModelInfo]:
    """The classifiers that form the ensemble: the largest group (at least two) sharing one class
    count -- the first such group in model order on a tie; none when no two classifiers match."""
    groups: dict[int, list[ModelInfo]] = {}
    for info in infos:
        if info.num_classes > 0:
            groups.setdefault(info.num_classes, []).append(info)
    best = max(groups.values(), key=len, default=[])
    return best if len(best) >= 2 else []


def score_columns(infos: list[ModelInfo]) -> list[str]:
    """Names of the score columns the actor adds (thresholds are fitted for each)."""
    names = [score_column(detector, info.alias) for info in infos if info.num_classes > 0 for detector in LOGIT_DETECTORS]
    if ensemble_members(infos):
        names += [score_column(detector) for detector in ENSEMBLE_DETECTORS]
    return names


def output_fields(infos: list[ModelInfo], settings: EmbedSettings) -> list[pa.Field]:
    """The columns the actor adds, in order."""
    fields = []
    for info in infos:
        fields.append(pa.field(f"{EMBEDDING_PREFIX}{info.alias}", pa.list_(pa.float32(), info.embedding_dim)))
        if info.num_classes > 0:
            if info.num_classes <= settings.max_full_probabilities:
                fields.append(pa.field(f"{PROBABILITIES_PREFIX}{info.alias}", pa.list_(pa.float32())))
                fields.append(pa.field(f"{LOGITS_PREFIX}{info.alias}", pa.list_(pa.float32())))
            fields.append(pa.field(f"{TOPK_CLASS_PREFIX}{info.alias}", pa.list_(pa.int32())))
            fields.append(pa.field(f"{TOPK_PROB_PREFIX}{info.alias}", pa.list_(pa.float32())))
    fields += [pa.field(name, pa.float32()) for name in score_columns(infos)]
    return fields


def _scatter(values: np.ndarray, rows: np.ndarray, n: int, field: pa.Field) -> pa.Array:
    """An Arrow column of ``n`` rows: rows ``rows`` get ``values``, every other row is null.

    Built from NumPy buffers (no per-row Python objects): lists of 1000 probabilities per image
    would otherwise cost more than the forward pass of a small model.
    """
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    if values.ndim == 1:
        full = np.zeros(n, dtype=values.dtype)
        full[rows] = values
        return pa.array(full, type=field.type, mask=mask)
    width = values.shape[1]
    full = np.zeros((n, width), dtype=values.dtype)
    full[rows] = values
    flat = pa.array(full.reshape(-1))
    null_mask = pa.array(mask) if mask.any() else None
    if pa.types.is_fixed_size_list(field.type):
        return pa.FixedSizeListArray.from_arrays(flat, width, mask=null_mask).cast(field.type)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, flat, mask=null_mask).cast(field.type)


def _pixel_matrix(column: pa.ChunkedArray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(valid row indices, uint8[n_valid, H, W, 3])`` from a binary pixel column, copy-free when
    every row is present."""
    array = column.combine_chunks()
    rows = np.flatnonzero(np.asarray(array.is_valid()))
    if len(rows) < len(array):
        array = array.take(pa.array(rows))
    if len(rows) == 0:
        return rows, np.zeros((0, height, width, 3), np.uint8)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return rows, data.reshape(len(rows), height, width, 3)


def _autocast_dtype(precision: str) -> Any:
    """``torch.autocast``'s dtype for ``embed.precision`` (``None``: full float32)."""
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class EmbedActor:
    """Loads the models once; embeds, classifies and scores each block (see module docstring)."""

    def __init__(self, infos: list[ModelInfo], settings: EmbedSettings) -> None:
        import torch

        self.infos = infos
        self.settings = settings
        use_cuda = settings.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if not use_cuda:
            torch.set_num_threads(max(1, int(round(settings.num_cpus))))
        self.models = [build_model(info.spec, info.import_root).to(self.device) for info in infos]
        self.autocast = _autocast_dtype(settings.precision)
        self.fields = {f.name: f for f in output_fields(infos, settings)}
        self.ensemble = ensemble_members(infos)
        self._last_end: float | None = None
        log.info("embedding actor: %d models on %s", len(self.models), self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        started = time.perf_counter()
        # waiting since the previous batch: the share of an actor's life it is not fed (the first
        # batch's wait is start-up, not starvation, and is not counted)
        idle = started - self._last_end if self._last_end is not None else 0.0
        n = batch.num_rows
        columns: dict[str, pa.Array] = {}
        probabilities: dict[str, np.ndarray] = {}
        rows = None
        for info, model in zip(self.infos, self.models):
            key = preprocessing_key(info.data_config)
            _, height, width = info.data_config["input_size"]
            valid, pixels = _pixel_matrix(batch.column(f"{PIXELS_PREFIX}{key}"), height, width)
            rows = valid
            if len(valid) == 0:
                embedding = np.zeros((0, info.embedding_dim), np.float32)
                logits = np.zeros((0, info.num_classes), np.float32) if info.num_classes else None
            else:
                images = torch.from_numpy(pixels.copy())
                if self.device.type == "cuda":  # page-locked, so the copy overlaps the previous model's work
                    images = images.pin_memory()
                x = normalize_batch(images.to(self.device, non_blocking=True), info.data_config["mean"],
                                    info.data_config["std"])
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                            enabled=self.autocast is not None):
                    emb_t, logits_t = embed_and_logits(model, x)
                embedding = emb_t.float().cpu().numpy()
                logits = logits_t.float().cpu().numpy() if logits_t is not None else None
            name = f"{EMBEDDING_PREFIX}{info.alias}"
            columns[name] = _scatter(embedding, valid, n, self.fields[name])
            if logits is None:
                continue
            p = softmax(logits)
            probabilities[info.alias] = p
            if f"{PROBABILITIES_PREFIX}{info.alias}" in self.fields:
                name = f"{PROBABILITIES_PREFIX}{info.alias}"
                columns[name] = _scatter(p.astype(np.float32), valid, n, self.fields[name])
                name = f"{LOGITS_PREFIX}{info.alias}"
                columns[name] = _scatter(logits.astype(np.float32), valid, n, self.fields[name])
            k = min(self.settings.top_k, info.num_classes)
            top = np.argsort(-p, axis=1, kind="stable")[:, :k]
            for prefix, values in ((TOPK_CLASS_PREFIX, top.astype(np.int32)),
                                   (TOPK_PROB_PREFIX, np.take_along_axis(p, top, axis=1).astype(np.float32))):
                columns[f"{prefix}{info.alias}"] = _scatter(values, valid, n, self.fields[f"{prefix}{info.alias}"])
            for detector in LOGIT_DETECTORS:
                name = f"score_{detector}_{info.alias}"
                columns[name] = _scatter(REGISTRY[detector]().score(logits), valid, n, self.fields[name])
        if self.ensemble:
            stacked = np.stack([probabilities[info.alias] for info in self.ensemble], axis=1)
            for detector in ENSEMBLE_DETECTORS:
                name = f"score_{detector}"
                columns[name] = _scatter(REGISTRY[detector]().score(stacked), rows, n, self.fields[name])
        out = batch.drop_columns([c for c in batch.column_names if c.startswith(PIXELS_PREFIX)])
        for name in self.fields:
            out = out.append_column(self.fields[name], columns[name])
        self._last_end = time.perf_counter()
        for name, seconds in ((EMBED_SECONDS, self._last_end - started), (EMBED_IDLE_SECONDS, idle)):
            values = np.zeros(n)
            values[:1] = seconds
            out = out.append_column(pa.field(name, pa.float64()), pa.array(values))
        return out
