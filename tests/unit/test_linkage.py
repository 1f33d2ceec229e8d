"""Complete linkage cuts chained components into groups of bounded diameter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ood_ray.dedup.linkage import hamming_matrix, split_component


def test_a_chain_is_cut_and_a_tight_group_kept():
    chain = np.array([(1 << k) - 1 for k in range(0, 40, 3)], np.uint64)  # each 3 bits from the next
    labels = split_component(hamming_matrix, chain, 4)
    for label in set(labels):
        members = chain[labels == label]
        assert hamming_matrix(members).max() <= 4
    assert len(set(labels)) > 1
    tight = np.array([0b0, 0b1, 0b11, 0b111], np.uint64)
    assert split_component(hamming_matrix, tight, 4).tolist() == [0, 0, 0, 0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=2, max_size=60, unique=True), st.integers(1, 12),
       st.sampled_from([1000, 5]))
def test_every_group_has_a_bounded_diameter(values, distance, exhaustive_max):
    values = np.array(values, np.uint64)
    labels = split_component(hamming_matrix, values, distance, exhaustive_max=exhaustive_max)
    assert len(labels) == len(values) and labels.min() == 0
    for label in set(labels.tolist()):
        assert hamming_matrix(values[labels == label]).max() <= distance


def cosine_distance_matrix(vectors: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """``1 - cos`` of row vectors: ``vectors`` x ``others`` (default: ``vectors``)."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = a if others is None else others / np.linalg.norm(others, axis=1, keepdims=True)
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def test_cosine_distances():
    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    matrix = cosine_distance_matrix(vectors)
    assert np.allclose(matrix, [[0, 0, 1], [0, 0, 1], [1, 1, 0]])
    assert split_component(cosine_distance_matrix, vectors, 0.02).tolist() == [0, 0, 1]


def test_rounding_below_zero_is_a_zero_distance():
    def distances(rows, others=None):
        matrix = np.array([[0.0, -1e-7, 0.5], [-1e-7, 0.0, 0.5], [0.5, 0.5, 0.0]])
        return matrix[np.ix_(rows, rows if others is None else others)]

    assert split_component(distances, np.arange(3), 0.02).tolist() == [0, 0, 1]
