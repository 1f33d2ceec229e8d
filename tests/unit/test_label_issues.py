"""Label issues: confident learning equal to cleanlab's, neighbour disagreement on known answers,
the class mapping's inference."""

from __future__ import annotations

import numpy as np
import pytest

from ood_ray.label_issues import (
    ConfidentLearning,
    add_sums,
    class_sums,
    infer_class_names,
    neighbor_disagreement,
    softmax,
)


def noisy_problem(seed: int, n: int = 3000, classes: int = 6, flip: float = 0.1):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1.0, (n, classes))
    logits[np.arange(n), truth] += rng.uniform(0.5, 4.0, n)
    given = truth.copy()
    flipped = rng.random(n) < flip
    given[flipped] = (truth[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    return softmax(logits), given, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_learning_equals_cleanlab_with_thresholds_summed_by_parts(seed):
    from cleanlab.filter import find_label_issues

    probs, given, flipped = noisy_problem(seed)
    classes = probs.shape[1]
    # thresholds from per-part sums, merged in another order than the rows
    total = {}
    for part in np.array_split(np.random.default_rng(seed).permutation(len(given)), 7):
        total = add_sums(total, class_sums(probs[part], given[part], classes))
    rule = ConfidentLearning.from_sums(total["sums"], total["counts"])
    score, flag = rule.issues(probs, given)
    expected = find_label_issues(given, probs, filter_by="confident_learning")
    np.testing.assert_array_equal(flag, expected)
    assert 0 < flag.sum() < len(given)
    np.testing.assert_allclose(score, 1 - probs[np.arange(len(given)), given])
    # it finds the flipped labels far better than chance
    assert (flag & flipped).sum() / flag.sum() > 3 * flipped.mean()
    assert total["correct"] == int((probs.argmax(1) == given).sum())


def test_a_class_without_reference_rows_is_never_confident():
    rule = ConfidentLearning.from_sums(np.array([1.6, 0.0]), np.array([2, 0]))
    assert rule.thresholds.tolist() == [0.8, 2.0]
    score, flag = rule.issues(np.array([[0.1, 0.9], [0.85, 0.15]]), np.array([0, 1]))
    # row 0: nothing confident (class 1 never is) -> no issue though the label is not the prediction;
    # row 1: class 0 confident, guess 0 != label 1, prediction 0 != 1 -> issue
    assert flag.tolist() == [False, True]
    np.testing.assert_allclose(score, [0.9, 0.85])


def test_neighbor_disagreement_counts_only_labelled_neighbours():
    own = np.array([b"cat", b"cat", b"", b"dog", b"dog"])
    neighbors = np.array([[b"cat", b"dog", b"dog", b"cat"],
                          [b"cat", b"", b"", b"cat"],
                          [b"cat", b"cat", b"cat", b"cat"],
                          [b"", b"", b"", b""],
                          [b"cat", b"cat", b"cat", b"bird"]])
    score = neighbor_disagreement(own, neighbors)
    np.testing.assert_allclose(score[[0, 1, 4]], [0.5, 0.0, 1.0])
    assert np.isnan(score[2]) and np.isnan(score[3])


def test_class_names_are_inferred_only_when_the_labels_fit_the_outputs():
    names, how = infer_class_names(["truck", "airplane", "cat"] * 3, 3)
    assert names == ["airplane", "cat", "truck"] and "sorted" in how
    names, how = infer_class_names(["0", "2", "1", "2"], 4)
    assert names == ["0", "1", "2", "3"] and "integer" in how
    assert infer_class_names(["a", "b"], 3)[0] is None
    assert infer_class_names(["07", "1"], 10)[0] is None  # "07" is not an index
    assert infer_class_names([], 3)[0] is None
