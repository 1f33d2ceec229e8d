"""Stage ``structure``: clusters and 2-D maps of the cluster model's embeddings, fitted on a seeded
sample on the driver (:mod:`ood_ray.structure`) and applied to every image by finalize; with
``--reference``, the reference run's clusters and PCA axes (UMAP and t-SNE are refitted).

State: the fitted centroids and PCA axes as an artifact (``detectors/structure-<run>.json``). UMAP
and t-SNE models have no portable state: a resumed run fits them again (same seed, same sample).
"""

from __future__ import annotations

import json
from typing import Any

from ood_ray.io import storage
from ood_ray.stages.base import Stage, StageResult


class StructureStage(Stage):
    name = "structure"
    reads = ("cluster", "project")
    report_key = "structure"

    def enabled(self, ctx: Any) -> bool:
        return bool(ctx.infos)

    def resumable(self, state: dict[str, Any]) -> bool:
        return not state.get("refit_on_resume", False)

    def load(self, ctx: Any, state: dict[str, Any]) -> Any:
        from ood_ray.structure import StructureFit, load_structure

        if not state.get("file"):
            return StructureFit(model=state.get("model"))
        base = state.get("from") or ctx.layout.root
        saved = json.loads(storage.read_bytes(storage.join(base, state["file"])))
        return load_structure(saved, ctx.sampler(), ctx.section(self), state.get("source", "this run"))

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.structure import fit_structure, load_structure, structure_state

        refit = any(m != "pca" for m in ctx.config.project.methods)
        if ctx.reference is not None and ctx.reference.stage(self.name).get("file"):
            saved = ctx.reference.stage(self.name)
            source = f"reference run {ctx.reference.run_id}"
            fit = load_structure(json.loads(ctx.reference.read_artifact(saved["file"])), ctx.sampler(), ctx.section(self),
                                 source)
            state = {"file": saved["file"], "model": fit.model, "from": ctx.reference.out, "source": source,
                     "refit_on_resume": refit}
            return StageResult(state=state, report=fit.report, value=fit)
        fit = fit_structure(ctx.sampler(), ctx.section(self), [info.alias for info in ctx.infos])
        result = StageResult(value=fit, state={"model": fit.model, "refit_on_resume": refit})
        if fit.clusters is not None or fit.projections is not None:
            name = f"detectors/structure-{ctx.layout.run_id}.json"
            uri = ctx.layout.artifact_uri(name)
            storage.write_bytes_atomic(uri, json.dumps(structure_state(fit)).encode(), ctx.retry)
            result.artifacts.append(uri)
            fit.report["file"] = name
            result.state["file"] = name
        result.report = fit.report
        return result
