"""Stage ``ood_fit``: the reference-split thresholds of every score and the fitted embedding
detectors (clf_entropy, Mahalanobis, RMD; see :mod:`ood_ray.ood_fit`), or with ``--reference`` the
reference run's, so new data is judged by the reference's rules.

State: ``thresholds`` (``{score column: value}``) and ``detectors`` (``{score column: {detector,
model, file}}``, each fitted state saved as a JSON artifact under ``detectors/``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ood_ray.io import storage
from ood_ray.stages.base import Stage, StageResult

log = logging.getLogger(__name__)


@dataclass
class FittedScores:
    """What finalize applies: thresholds and the fitted detectors' states."""

    thresholds: dict[str, float] = field(default_factory=dict)
    #: ``{score column: {"detector": name, "model": alias, "state": state_dict}}``
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_fitted(state: dict[str, Any], base: str) -> FittedScores:
    """The thresholds and detectors of a recorded fit whose artifacts lie under ``base``."""
    fitted = {column: {"detector": e["detector"], "model": e["model"],
                       "state": json.loads(storage.read_bytes(storage.join(base, e["file"]))),
                       **({"members": e["members"]} if "members" in e else {})}
              for column, e in state.get("detectors", {}).items()}
    return FittedScores(dict(state.get("thresholds", {})), fitted)


class OODFitStage(Stage):
    name = "ood_fit"
    reads = ("ood",)
    report_key = "ood"

    def enabled(self, ctx: Any) -> bool:
        return bool(ctx.infos)

    def load(self, ctx: Any, state: dict[str, Any]) -> FittedScores:
        return load_fitted(state, state.get("from") or ctx.layout.root)

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.embed.actor import score_columns
        from ood_ray.ood_fit import fit_ood
        from ood_ray.stages.knn import knn_score_columns

        if ctx.reference is not None:
            saved = ctx.reference.stage(self.name)
            value = load_fitted(saved, ctx.reference.out)
            report = {"reference": f"run {ctx.reference.run_id} in {ctx.reference.out}",
                      "thresholds": ctx.reference.run.get("ood", {}).get("thresholds", {}),
                      "in_distribution_quantile": ctx.reference.run.get("ood", {}).get("in_distribution_quantile"),
                      "detectors": saved.get("detectors", {})}
            # The reference's detector files are its own artifacts; this run records where they are.
            state = {"thresholds": value.thresholds, "detectors": saved.get("detectors", {}), "from": ctx.reference.out}
            return StageResult(state=state, report=report, value=value)
        knn_models = [alias for alias, entry in ctx.states.get("knn", {}).get("models", {}).items() if "k" in entry]
        columns = score_columns(ctx.infos) + knn_score_columns(knn_models)
        rows = ctx.states["scan"].get("reference_rows", 0)
        described = (f"split = {ctx.reference_split!r} ({rows} rows)" if ctx.reference_split is not None
                     else "all ok rows (no reference split)")
        fit = fit_ood(ctx.con(), ctx.infos, columns, ctx.section(self).ood, ctx.reference_where(), described,
                      ctx.sampler())
        detectors, artifacts = {}, []
        for column, entry in fit.fitted.items():
            name = f"detectors/{column}-{ctx.layout.run_id}.json"
            uri = ctx.layout.artifact_uri(name)
            storage.write_bytes_atomic(uri, json.dumps(entry["state"]).encode(), ctx.retry)
            artifacts.append(uri)
            detectors[column] = {"detector": entry["detector"], "model": entry["model"], "file": name,
                                 **({"members": entry["members"]} if "members" in entry else {})}
        state = {"thresholds": fit.thresholds, "detectors": detectors}
        return StageResult(state=state, report={**fit.report, "detectors": detectors}, artifacts=artifacts,
                           value=FittedScores(fit.thresholds, fit.fitted))
