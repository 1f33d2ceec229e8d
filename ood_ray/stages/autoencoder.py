"""Stage ``autoencoder``: ``score_recon`` -- a small convolutional autoencoder trained with Ray
Train on the reference images (:mod:`ood_ray.autoencoder.fit`), its threshold from held-out
reference images; with ``--reference``, the reference run's weights and threshold.

State: the weights file (an artifact, ``autoencoder/autoencoder-<run>.pt``) and the threshold.
"""

from __future__ import annotations

from typing import Any

from ood_ray.io import storage
from ood_ray.stages.base import Stage, StageResult


class AutoencoderStage(Stage):
    name = "autoencoder"
    reads = ("autoencoder", "ood")
    report_key = "autoencoder"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.autoencoder.enabled or (ctx.reference is not None and bool(ctx.reference.stage(self.name)))

    def load(self, ctx: Any, state: dict[str, Any]) -> Any:
        from ood_ray.autoencoder.fit import AutoencoderFit

        if not state.get("file"):
            return AutoencoderFit(report=state.get("report", {}))
        weights = storage.read_bytes(storage.join(state.get("from") or ctx.layout.root, state["file"]))
        return AutoencoderFit(weights, state.get("threshold"), state.get("report", {}))

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.autoencoder.fit import AutoencoderFit, fit_autoencoder

        if ctx.reference is not None:
            saved = ctx.reference.stage(self.name)
            if not saved.get("file"):
                report = {"skipped": "the reference run has no autoencoder"}
                return StageResult(report=report, state={"report": report}, value=AutoencoderFit(report=report))
            report = {**saved.get("report", {}), "file": saved["file"], "from": f"reference run {ctx.reference.run_id}"}
            state = {**saved, "from": ctx.reference.out, "report": report}
            return StageResult(state=state, report=report, value=self.load(ctx, state))
        storage_path = ctx.config.autoencoder.storage_path or ctx.layout.work_dir("train")
        fit = fit_autoencoder(ctx.sampler(), ctx.reference_where(), ctx.section(self), storage_path)
        result = StageResult(value=fit)
        if fit.weights is not None:
            name = f"autoencoder/autoencoder-{ctx.layout.run_id}.pt"
            uri = ctx.layout.artifact_uri(name)
            storage.write_bytes_atomic(uri, fit.weights, ctx.retry)
            result.artifacts.append(uri)
            fit.report["file"] = name
        result.report = fit.report
        result.state = {"file": fit.report.get("file"), "threshold": fit.threshold, "report": fit.report}
        return result
