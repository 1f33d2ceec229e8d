"""The exact merge of per-shard top-k lists (what ``faiss.ResultHeap`` does across shards).

Each shard returns, per query, its ``k`` best ``(similarity, id)`` pairs sorted descending; the
global top-``k`` is among their union, so concatenating the lists and keeping the ``k`` largest
similarities gives exactly the answer of one index over all vectors. Missing entries (a shard with
fewer than ``k`` vectors: FAISS's label -1) carry similarity ``-inf`` and an empty id.
"""

from __future__ import annotations

import numpy as np

MISSING_ID = b""


def clean(similarities: np.ndarray, positions: np.ndarray, ids: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """Map FAISS positions to ids (and to each of ``extra``, bytes arrays aligned with ``ids``);
    ``-1`` positions become ``(-inf, b"", b"" ...)``."""
    missing = positions < 0
    sims = np.where(missing, -np.inf, similarities).astype(np.float32)
    out = [sims]
    for values in (ids, *extra):
        found = values[np.where(missing, 0, positions)] if len(values) else np.full(positions.shape, MISSING_ID, dtype=values.dtype)
        out.append(np.where(missing, MISSING_ID, found).astype(values.dtype))
    return tuple(out)


def merge_topk(parts: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """Global top-``k`` ``(similarities, ids, *extra)`` per query from per-shard ``(n, k_i)`` results
    (``extra``: arrays that travel with the ids, e.g. the neighbours' labels; missing: ``b""``).

    Equal similarities are ordered by id, so the answer does not depend on how the vectors were
    split into shards or in which order they were added.
    """
    columns = [np.concatenate([p[j] for p in parts], axis=1) for j in range(len(parts[0]))]
    if columns[0].shape[1] < k:
        pad = ((0, 0), (0, k - columns[0].shape[1]))
        columns = [np.pad(columns[0], pad, constant_values=-np.inf)] + [
            np.pad(c, pad, constant_values=MISSING_ID) for c in columns[1:]]
    order = np.lexsort((columns[1], -columns[0]), axis=1)[:, :k]
    return tuple(np.take_along_axis(c, order, axis=1) for c in columns)


def drop_self(sims: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """From ``k + 1`` neighbours per query, remove the query's own id (leave-one-out); where it is
    not among them (an identical twin outranked it), drop the last instead. Returns ``k`` columns
    of ``sims``, ``ids`` and each of ``extra``."""
    is_self = ids == own[:, None]
    first_self = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), first_self] = False
    return tuple(a[keep].reshape(len(ids), -1)[:, :k] for a in (sims, ids, *extra))
