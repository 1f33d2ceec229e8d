"""Near duplicates by embedding: image pairs at or above ``knn.duplicate_similarity`` (cosine).

The kNN pass proposes, for every image, its nearest images in the whole run (reference and other
rows) with a cosine similarity of at least the threshold. Here the proposals become:

- ``duplicate_pairs``: one row per unordered pair and model with the best similarity seen, so a
  threshold can be explained and re-applied in SQL;
- groups by union-find (connected components) per model, as ``duplicates`` rows with
  ``kind = 'near'``, ``method = 'embedding'``, ``model``, and ``distance = 1 - s`` where ``s`` is
  the member's highest similarity to another member.

Groups spanning splits appear in the ``leakage`` view like the hash-based groups.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from ood_ray.dedup.components import compute_components
from ood_ray.dedup.linkage import cut_components, split_component
from ood_ray.tables import DUPLICATE_PAIRS_SCHEMA, DUPLICATES_SCHEMA


def unique_pairs(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Unordered pairs (``image_id < other_id``) of the ``_pairs`` view with their best similarity."""
    return con.sql(
        """SELECT least(image_id, other_id) AS image_id, greatest(image_id, other_id) AS other_id, model,
                  max(cosine_similarity) AS cosine_similarity, 'embedding' AS method,
                  1.0 - max(cosine_similarity)::DOUBLE AS distance, NULL::VARCHAR AS transform
           FROM _pairs WHERE image_id <> other_id GROUP BY image_id, other_id, model ORDER BY model, image_id, other_id"""
    ).to_arrow_table().cast(DUPLICATE_PAIRS_SCHEMA)


def cut_by_pairs(labels: np.ndarray, ia: np.ndarray, ib: np.ndarray, distance: np.ndarray, max_distance: float,
                 exhaustive_max: int = 2000) -> np.ndarray:
    """Components cut so that every two members of a group are a candidate pair within
    ``max_distance`` (complete linkage over the pairs; a pair the kNN did not propose counts as
    far apart): a chain of near neighbours is not one group."""
    def split(members: np.ndarray) -> np.ndarray:
        position = {int(m): k for k, m in enumerate(members)}
        matrix = np.full((len(members), len(members)), 2.0)
        np.fill_diagonal(matrix, 0.0)
        inside = labels[ia] == labels[members[0]]
        for x, y, d in zip(ia[inside].tolist(), ib[inside].tolist(), distance[inside].tolist()):
            i, j = position[x], position[y]
            matrix[i, j] = matrix[j, i] = min(matrix[i, j], d)

        def distances(rows: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
            return matrix[np.ix_(rows, rows if others is None else others)]

        return split_component(distances, np.arange(len(members)), max_distance, exhaustive_max)

    return cut_components(labels, split)


def embedding_groups(pairs: pa.Table, max_distance: float = 2.0) -> pa.Table:
    """``duplicates`` rows per model: the connected components of ``pairs`` cut by complete linkage
    at ``max_distance`` (``1 - knn.duplicate_similarity``), groups of two or more."""
    rows: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    for model in sorted(set(pairs.column("model").to_pylist())):
        part = pairs.filter(pa.compute.equal(pairs.column("model"), model))
        a = np.asarray(part.column("image_id").to_pylist(), dtype=object)
        b = np.asarray(part.column("other_id").to_pylist(), dtype=object)
        similarity = part.column("cosine_similarity").to_numpy().astype(np.float64)
        nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        ia, ib = inverse[: len(a)], inverse[len(a):]
        labels = cut_by_pairs(compute_components(len(nodes), ia, ib), ia, ib, 1.0 - similarity, max_distance)
        best = np.full(len(nodes), -np.inf)
        np.maximum.at(best, ia, similarity)
        np.maximum.at(best, ib, similarity)
        sizes = np.bincount(labels)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            if len(members) < 2:
                continue
            group_id = f"near-embedding-{model}-{min(nodes[members])[:16]}"
            for m in members:
                rows["group_id"].append(group_id)
                rows["image_id"].append(nodes[m])
                rows["kind"].append("near")
                rows["method"].append("embedding")
                rows["distance"].append(float(1.0 - best[m]))
                rows["group_size"].append(int(sizes[label]))
                rows["model"].append(model)
    return pa.Table.from_pydict(rows, schema=DUPLICATES_SCHEMA)
