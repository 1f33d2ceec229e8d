"""Label issues: labelled rows whose label the data or the model contradicts.

Two scores per model, both in [0, 1], higher = more likely mislabelled, null for unlabelled rows:

- ``score_label_issue_knn_<model>`` -- **neighbour disagreement**: of the ``k`` nearest labelled
  reference neighbours of the image (the kNN stage's leave-one-out lists; cosine on the model's
  embedding), the share whose label differs from the image's,

      s_knn(x) = #{j <= k : y(n_j) != y(x), y(n_j) labelled} / #{j <= k : y(n_j) labelled}

  fastdup's label score (the share of similar images with the same label, as 1 - it) and the
  neighbour side of DataEval's ``label_errors`` (which compares mean distances to the k nearest of
  the same and of other classes). ``is_label_issue_knn_<model>``: ``s_knn > label_issues.knn_threshold``
  (0.5: most neighbours carry another label). Every model with embeddings; any labels.

- ``score_label_issue_cl_<model>`` -- **confident learning** (Northcutt, Jiang & Chuang, "Confident
  Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021) on the classifier's probabilities
  ``p = softmax(W z + b)`` (its last linear layer on the stored embedding ``z``): the per-class
  thresholds are the mean self-confidence of the class on the reference rows,

      t_j = mean { p_j(x) : x in reference, y(x) = j }

  and a row is an issue when some class is confident (``p_j >= t_j - 1e-6``), the confident guess
  (the argmax among the confident classes' probabilities when several are, else the one) is not
  its label, and the label is not the model's top prediction -- cleanlab 2's
  ``find_label_issues(filter_by="confident_learning")`` including its final "given label equals
  the prediction" filter, computed exactly from ``t`` (a sum per class over the reference parts),
  then row by row. The score is ``1 - p_y(x)`` (cleanlab's default ``self_confidence`` rank).
  ``is_label_issue_cl_<model>``: that rule. Only for a classifier whose outputs are the dataset's
  classes: ``models[].class_names`` names them in order; otherwise the mapping is inferred from the
  reference labels -- integers ``0 .. C-1`` as themselves, or exactly ``C`` distinct names in sorted
  order (the ``ImageFolder`` convention, which CIFAR-10's class folders follow) -- and used only
  when the model's top-1 accuracy on the reference rows under it reaches
  ``label_issues.min_accuracy``.

``score_label_issue`` / ``is_label_issue``: those of ``label_issues.model`` (default: the first
classifier over the labels, else the first model) -- its confident-learning pair when it has one,
else its neighbour pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: cleanlab's tolerance on the confident thresholds and on the "label is the prediction" check
THRESHOLD_TOLERANCE = 1e-6
PREDICTION_TOLERANCE = 1e-6


def knn_score_column(alias: str) -> str:
    return f"score_label_issue_knn_{alias}"


def cl_score_column(alias: str) -> str:
    return f"score_label_issue_cl_{alias}"


def flag_of(score_column: str) -> str:
    """``score_label_issue_...`` -> ``is_label_issue_...``."""
    return "is_" + score_column[len("score_"):]


def is_label_issue_column(name: str) -> bool:
    return name.startswith(("score_label_issue", "is_label_issue"))


def neighbor_disagreement(own: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """``s_knn`` of the module docstring for labels as bytes (``b""``: unlabelled): ``own`` ``(n,)``,
    ``neighbors`` ``(n, k)``; NaN for an unlabelled row or one without labelled neighbours."""
    own = np.asarray(own)
    labelled = neighbors != b""
    counted = labelled.sum(axis=1)
    disagree = (labelled & (neighbors != own[:, None])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = disagree / counted
    score[(counted == 0) | (own == b"")] = np.nan
    return score


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def class_sums(probabilities: np.ndarray, classes: np.ndarray, num_classes: int) -> dict[str, Any]:
    """What the thresholds need from one part: per class the sum of its own probability over the
    rows labelled with it, the count of those rows, and how many are the top prediction."""
    sums = np.zeros(num_classes)
    np.add.at(sums, classes, probabilities[np.arange(len(classes)), classes])
    counts = np.bincount(classes, minlength=num_classes)
    correct = int((probabilities.argmax(axis=1) == classes).sum())
    return {"sums": sums, "counts": counts, "correct": correct}


def add_sums(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if not total:
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in part.items()}
    return {"sums": total["sums"] + part["sums"], "counts": total["counts"] + part["counts"],
            "correct": total["correct"] + part["correct"]}


@dataclass(frozen=True)
class ConfidentLearning:
    """Confident learning's per-row rule with fitted thresholds ``t_j`` (module docstring)."""

    thresholds: np.ndarray

    @classmethod
    def from_sums(cls, sums: np.ndarray, counts: np.ndarray) -> ConfidentLearning:
        """``t_j = sums_j / counts_j``; a class without reference rows gets 2 (never confident),
        as cleanlab does."""
        with np.errstate(invalid="ignore", divide="ignore"):
            thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)
        return cls(np.asarray(thresholds, dtype=np.float64))

    def issues(self, probabilities: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(score = 1 - p_y, flag)`` for rows with class indices ``classes``."""
        p = np.asarray(probabilities, dtype=np.float64)
        rows = np.arange(len(classes))
        confident = p >= self.thresholds - THRESHOLD_TOLERANCE
        count = confident.sum(axis=1)
        guess = np.where(count > 1, p.argmax(axis=1), confident.argmax(axis=1))
        flag = (count > 0) & (guess != classes)
        bumped = p.copy()
        bumped[rows, classes] += PREDICTION_TOLERANCE
        flag &= bumped.argmax(axis=1) != classes
        return 1.0 - p[rows, classes], flag


def infer_class_names(reference_labels: list[str], num_classes: int) -> tuple[list[str] | None, str]:
    """The dataset label of each of ``num_classes`` outputs, inferred from the reference rows'
    distinct labels (module docstring), and how; ``None`` with the reason when neither rule fits."""
    labels = sorted(set(reference_labels))
    if not labels:
        return None, "no labelled reference rows"
    if all(label.isdigit() for label in labels) and max(int(label) for label in labels) < num_classes:
        names = [str(i) for i in range(num_classes)]
        if all(str(int(label)) == label for label in labels):
            return names, "integer labels as class indices"
    if len(labels) == num_classes:
        return labels, "the labels in sorted order"
    return None, f"{len(labels)} distinct reference labels for {num_classes} outputs (give models[].class_names)"
