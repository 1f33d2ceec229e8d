"""Stage ``label_issues``: confident learning's fitted part, applied by ``finalize``.

For every classifier whose outputs are the dataset's classes (:mod:`ood_ray.label_issues`), one
merge pass of Ray tasks over the staged parts sums, per class, the model's probability of the
class over the reference rows labelled with it (``p = softmax(W z + b)`` on the stored embedding,
``W``, ``b`` the model's last linear layer), which gives the thresholds ``t_j`` exactly, and counts
its top-1 hits (an inferred class mapping is kept only at ``label_issues.min_accuracy`` or above).
The head and the thresholds are saved as one JSON artifact per model; ``finalize`` scores every
labelled row with them and sets ``score_label_issue`` / ``is_label_issue`` from the label model.
With ``--reference`` the reference run's are used.

State: ``models`` (``{alias: {file, class_names, how, accuracy, n_reference}}``), ``label_model``,
``method`` (``cl`` or ``knn``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.columns import embedding_column, embedding_matrix
from ood_ray.detectors.head import decode_array, encode_array
from ood_ray.io import storage
from ood_ray.label_issues import ConfidentLearning, add_sums, class_sums, infer_class_names, softmax
from ood_ray.stages.base import Stage, StageResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierLabels:
    """One classifier's confident-learning rule: its head, class names and thresholds."""

    weight: np.ndarray
    bias: np.ndarray
    class_names: tuple[str, ...]
    rule: ConfidentLearning

    def class_indices(self, labels: list[str | None]) -> np.ndarray:
        """Each label's output index (-1: unlabelled or not one of the classes)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.asarray([index.get(label, -1) if label is not None else -1 for label in labels], dtype=np.int64)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(embeddings, dtype=np.float64) @ self.weight.T + self.bias)

    def state(self) -> dict[str, Any]:
        return {"weight": encode_array(self.weight), "bias": encode_array(self.bias), "class_names": list(self.class_names),
                "thresholds": encode_array(self.rule.thresholds)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClassifierLabels:
        return cls(decode_array(state["weight"]), decode_array(state["bias"]), tuple(state["class_names"]),
                   ConfidentLearning(decode_array(state["thresholds"])))


@dataclass(frozen=True)
class LabelIssuesFit:
    """What finalize applies: the classifiers' rules and where ``is_label_issue`` comes from."""

    classifiers: dict[str, ClassifierLabels] = field(default_factory=dict)
    label_model: str | None = None
    method: str | None = None


def part_sums(table: pa.Table, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, :func:`ood_ray.label_issues.class_sums` over one part's reference rows."""
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
    if spec["reference_split"] is not None:
        ok = pc.and_(ok, pc.fill_null(pc.equal(table.column("split"), spec["reference_split"]), False))
    table = table.filter(pc.and_(ok, pc.is_valid(table.column("label"))))
    out = {}
    for alias, model in spec["models"].items():
        head: ClassifierLabels = model
        rows, X = embedding_matrix(table.column(embedding_column(alias)))
        if len(rows) == 0:
            continue
        classes = head.class_indices(table.column("label").take(pa.array(rows)).to_pylist())
        keep = classes >= 0
        out[alias] = class_sums(head.probabilities(X[keep]), classes[keep], len(head.class_names))
    return out


def merge_sums(total: dict[str, dict[str, Any]], part: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for alias, sums in part.items():
        total[alias] = add_sums(total.get(alias, {}), sums)
    return total


def apply_label_issues(batch: pa.Table, fit: LabelIssuesFit) -> pa.Table:
    """``score_label_issue_cl_<model>`` / ``is_label_issue_cl_<model>`` of every classifier, then
    ``score_label_issue`` / ``is_label_issue`` of the label model (null where not scored)."""
    from ood_ray.label_issues import cl_score_column, flag_of, knn_score_column

    n = batch.num_rows
    labels = batch.column("label").to_pylist() if "label" in batch.column_names else [None] * n
    for alias, head in fit.classifiers.items():
        rows, X = embedding_matrix(batch.column(embedding_column(alias)))
        classes = head.class_indices([labels[r] for r in rows.tolist()])
        keep = classes >= 0
        score, flag = np.zeros(n), np.zeros(n, bool)
        valid = np.zeros(n, bool)
        if keep.any():
            s, f = head.rule.issues(head.probabilities(X[keep]), classes[keep])
            score[rows[keep]], flag[rows[keep]], valid[rows[keep]] = s, f, True
        batch = batch.append_column(pa.field(cl_score_column(alias), pa.float32()), pa.array(score.astype(np.float32), mask=~valid))
        batch = batch.append_column(pa.field(flag_of(cl_score_column(alias)), pa.bool_()), pa.array(flag, mask=~valid))
    if fit.label_model is not None:
        source = (cl_score_column if fit.method == "cl" else knn_score_column)(fit.label_model)
        if source in batch.column_names:
            batch = batch.append_column(pa.field("score_label_issue", pa.float32()), batch.column(source))
            batch = batch.append_column(pa.field("is_label_issue", pa.bool_()), batch.column(flag_of(source)))
    return batch


class LabelIssuesStage(Stage):
    name = "label_issues"
    reads = ("label_issues",)
    report_key = "label_issues"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.label_issues.enabled and bool(ctx.infos) and "images" in ctx.staged

    def load(self, ctx: Any, state: dict[str, Any]) -> LabelIssuesFit:
        base = state.get("from") or ctx.layout.root
        classifiers = {alias: ClassifierLabels.from_state(json.loads(storage.read_bytes(storage.join(base, entry["file"]))))
                       for alias, entry in state.get("models", {}).items()}
        return LabelIssuesFit(classifiers, state.get("label_model"), state.get("method"))

    def run(self, ctx: Any) -> StageResult:
        cfg = ctx.section(self).label_issues
        knn_labelled = ctx.states.get("knn", {}).get("label_k", 0) > 0
        if ctx.reference is not None:
            saved = ctx.reference.stage(self.name)
            state = {**saved, "from": ctx.reference.out}
            classifiers = self.load(ctx, state).classifiers
            report = {"reference": f"run {ctx.reference.run_id} in {ctx.reference.out}", **{k: v for k, v in saved.items()}}
        else:
            classifiers, models, report = self._fit(ctx, cfg)
            state = {"models": models}
        state["label_model"], state["method"] = self._label_model(ctx, cfg, classifiers, knn_labelled)
        report.update(label_model=state["label_model"], method=state["method"], knn_k=cfg.k if knn_labelled else None,
                      knn_threshold=cfg.knn_threshold if knn_labelled else None)
        artifacts = [ctx.layout.artifact_uri(e["file"]) for e in state.get("models", {}).values()] if ctx.reference is None else []
        return StageResult(state=state, report=report, artifacts=artifacts,
                           value=LabelIssuesFit(classifiers, state["label_model"], state["method"]))

    @staticmethod
    def _label_model(ctx: Any, cfg: Any, classifiers: dict[str, ClassifierLabels], knn_labelled: bool) -> tuple[str | None, str | None]:
        aliases = [info.alias for info in ctx.infos]
        wanted = cfg.model or next(iter(classifiers), None) or (aliases[0] if aliases else None)
        if wanted in classifiers:
            return wanted, "cl"
        if knn_labelled and wanted in ctx.states.get("knn", {}).get("models", {}) and "k" in ctx.states["knn"]["models"][wanted]:
            return wanted, "knn"
        return None, None

    def _fit(self, ctx: Any, cfg: Any) -> tuple[dict[str, ClassifierLabels], dict[str, Any], dict[str, Any]]:
        from ood_ray.embed.models import classifier_head

        where = ctx.reference_where()
        reference_labels = [r[0] for r in ctx.con().execute(
            f"SELECT DISTINCT label FROM images WHERE {where} AND label IS NOT NULL").fetchall()]
        candidates: dict[str, tuple[ClassifierLabels, str, bool]] = {}
        report: dict[str, Any] = {"models": {}, "skipped": {}}
        for info in ctx.infos:
            if info.num_classes == 0:
                continue
            given = info.spec.class_names
            if given is not None and len(given) != info.num_classes:
                report["skipped"][info.alias] = f"{len(given)} class_names for {info.num_classes} outputs"
                continue
            names, how = (list(given), "models[].class_names") if given is not None else infer_class_names(reference_labels, info.num_classes)
            if names is None:
                report["skipped"][info.alias] = how
                log.info("label issues %s: no confident learning -- %s", info.alias, how)
                continue
            head = classifier_head(info)
            if head is None:
                report["skipped"][info.alias] = "no linear classifier head"
                continue
            placeholder = ConfidentLearning(np.zeros(info.num_classes))
            candidates[info.alias] = (ClassifierLabels(head[0], head[1], tuple(names), placeholder), how, given is not None)
        if not candidates:
            return {}, {}, report
        spec = {"reference_split": ctx.reference_split, "models": {a: c[0] for a, c in candidates.items()}}
        columns = ["status", "split", "label", *(embedding_column(a) for a in candidates)]
        sums = ctx.parts().merge(part_sums, spec, columns, merge_sums, dict)
        classifiers, models = {}, {}
        for alias, (head, how, given) in candidates.items():
            total = sums.get(alias)
            n = int(total["counts"].sum()) if total else 0
            accuracy = total["correct"] / n if n else 0.0
            if n == 0 or (not given and accuracy < cfg.min_accuracy):
                why = ("no reference row carries one of its classes" if n == 0 else
                       f"top-1 accuracy {accuracy:.3f} under the inferred classes ({how}) < label_issues.min_accuracy")
                report["skipped"][alias] = why
                log.info("label issues %s: no confident learning -- %s", alias, why)
                continue
            fitted = ClassifierLabels(head.weight, head.bias, head.class_names,
                                      ConfidentLearning.from_sums(total["sums"], total["counts"]))
            name = f"detectors/label_issues_{alias}-{ctx.layout.run_id}.json"
            storage.write_bytes_atomic(ctx.layout.artifact_uri(name), json.dumps(fitted.state()).encode(), ctx.retry)
            classifiers[alias] = fitted
            models[alias] = {"file": name, "class_names": list(head.class_names), "how": how,
                             "accuracy": round(accuracy, 6), "n_reference": n}
            report["models"][alias] = {**models[alias], "thresholds": [round(float(t), 6) for t in fitted.rule.thresholds]}
            log.info("label issues %s: confident learning over %d classes (%s), reference accuracy %.3f", alias,
                     len(head.class_names), how, accuracy)
        return classifiers, models, report
