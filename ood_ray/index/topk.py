"""The exact merge of per-shard top-k lists (what ``faiss.ResultHeap`` does across shards).

Each shard returns, per query, its ``k`` best ``(similarity, id)`` pairs sorted descending; the
global top-``k`` is among their union, so concatenating the lists and keeping the ``k`` largest
similarities gives exactly the answer of one index over all vectors. Missing entries (a shard with
fewer than ``k`` vectors: FAISS's label -1) carry similarity ``-inf`` and an empty id.
"""

from __future__ import annotations

import numpy as np

MISSING_ID = b""


def clean(similarities: np.ndarray, positions: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map FAISS positions to ids; ``-1`` positions become ``(-inf, b"")``."""
    missing = positions < 0
    sims = np.where(missing, -np.inf, similarities).astype(np.float32)
    found = ids[np.where(missing, 0, positions)] if len(ids) else np.full(positions.shape, MISSING_ID, dtype="S32")
    return sims, np.where(missing, MISSING_ID, found).astype("S32")


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top-``k`` ``(similarities, ids)`` per query from per-shard ``(n, k_i)`` results.

    Equal similarities are ordered by id, so the answer does not depend on how the vectors were
    split into shards or in which order they were added.
    """
    sims = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    if sims.shape[1] < k:
        pad = k - sims.shape[1]
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=MISSING_ID)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def drop_self(sims: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` neighbours per query, remove the query's own id (leave-one-out); where it is
    not among them (an identical twin outranked it), drop the last instead. Returns ``k`` columns."""
    is_self = ids == own[:, None]
    first_self = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), first_self] = False
    return sims[keep].reshape(len(ids), -1)[:, :k], ids[keep].reshape(len(ids), -1)[:, :k]
