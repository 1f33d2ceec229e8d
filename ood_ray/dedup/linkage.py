"""Groups no wider than their evidence: a connected component of near-duplicate pairs is cut into
groups whose members are all within the pair threshold of each other (complete linkage).

Union-find over pairs within ``d`` chains: ``a~b`` and ``b~c`` put ``a`` and ``c`` in one group
however far apart they are, and periodic textures (stripes, checkerboards), whose hashes differ a
little from one image to the next, chain hundreds of unrelated images into one group. Here a
component whose diameter (largest distance between two of its members) exceeds ``d`` is cut by
complete-linkage agglomerative clustering (``scipy.cluster.hierarchy.linkage(method="complete")``,
cut at ``d``): every group it returns has diameter at most ``d``, so every pair of members is
itself a near-duplicate pair. Components with more than ``exhaustive_max`` members (the pairwise
matrix would be too large) are cut greedily instead: members in a fixed order, each joins the
first group whose leader is within ``d // 2`` (diameter at most ``d`` by the triangle inequality)
or starts a group.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def hamming_matrix(values: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Hamming distances of uint64 hashes: ``values`` x ``others`` (default: ``values``)."""
    values = np.asarray(values, np.uint64)
    others = values if others is None else np.asarray(others, np.uint64)
    return np.bitwise_count(values[:, None] ^ others[None, :]).astype(np.float64)


def split_component(distances: Callable[..., np.ndarray], items: np.ndarray, max_distance: float,
                    exhaustive_max: int = 2000) -> np.ndarray:
    """Labels ``0..k-1`` cutting ``items`` (one component) into groups of diameter ``<= max_distance``;
    ``distances(a)`` gives the pairwise matrix of ``a``, ``distances(a, b)`` the ``a`` x ``b`` one."""
    n = len(items)
    if n <= 1:
        return np.zeros(n, np.int64)
    if n <= exhaustive_max:
        matrix = np.maximum(distances(items), 0.0)  # 1 - cos of float32 vectors can be -1e-7
        if matrix.max() <= max_distance:
            return np.zeros(n, np.int64)
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        tree = linkage(squareform(matrix, checks=False), method="complete")
        labels = fcluster(tree, t=max_distance, criterion="distance") - 1
        return _relabel(labels)
    labels = np.full(n, -1, np.int64)
    leaders: list[int] = []
    radius = max_distance / 2
    for i in range(n):
        if leaders:
            hit = np.flatnonzero(distances(items[i:i + 1], items[leaders])[0] <= radius)
            if len(hit):
                labels[i] = labels[leaders[hit[0]]]
                continue
        labels[i] = len(leaders)
        leaders.append(i)
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by first appearance (deterministic for a given input order)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def cut_components(labels: np.ndarray, split: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Component labels refined: each component of three or more members (indices into
    ``labels``) is cut by ``split(members)`` (part labels ``0..k-1``, e.g. :func:`split_component`
    on their distances); part 0 keeps the component's label, the others get new ones."""
    out = labels.astype(np.int64).copy()
    next_label = int(out.max()) + 1 if len(out) else 0
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, boundaries):
        if len(members) < 3:
            continue
        parts = split(members)
        for part in range(1, int(parts.max()) + 1):
            out[members[parts == part]] = next_label
            next_label += 1
    return out
