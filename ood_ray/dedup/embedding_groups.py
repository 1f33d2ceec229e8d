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
from ood_ray.tables import DUPLICATE_PAIRS_SCHEMA, DUPLICATES_SCHEMA


def unique_pairs(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Unordered pairs (``image_id < other_id``) of the ``_pairs`` view with their best similarity."""
    return con.sql(
        """SELECT least(image_id, other_id) AS image_id, greatest(image_id, other_id) AS other_id, model,
                  max(cosine_similarity) AS cosine_similarity
           FROM _pairs WHERE image_id <> other_id GROUP BY ALL ORDER BY model, image_id, other_id"""
    ).to_arrow_table().cast(DUPLICATE_PAIRS_SCHEMA)


def embedding_groups(pairs: pa.Table) -> pa.Table:
    """``duplicates`` rows of the connected components of ``pairs``, per model."""
    rows: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    for model in sorted(set(pairs.column("model").to_pylist())):
        part = pairs.filter(pa.compute.equal(pairs.column("model"), model))
        a = np.asarray(part.column("image_id").to_pylist(), dtype=object)
        b = np.asarray(part.column("other_id").to_pylist(), dtype=object)
        similarity = part.column("cosine_similarity").to_numpy().astype(np.float64)
        nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        ia, ib = inverse[: len(a)], inverse[len(a):]
        labels = compute_components(len(nodes), ia, ib)
        best = np.full(len(nodes), -np.inf)
        np.maximum.at(best, ia, similarity)
        np.maximum.at(best, ib, similarity)
        sizes = np.bincount(labels)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
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
