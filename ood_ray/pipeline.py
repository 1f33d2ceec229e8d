"""The audit: the ordered list of stages and a short runner.

For each enabled stage the runner loads it from the run's ledger (``--resume``) or runs it, times
it, records it in the ledger, and hands its result to the run; then it commits (see
:mod:`ood_ray.run.layout`). Stages: :mod:`ood_ray.stages` (the contract: :mod:`ood_ray.stages.base`).
Counts reconcile: the job fails (and commits nothing) if ``images`` rows != objects in.
"""

from __future__ import annotations

import logging
from typing import Any

from ood_ray.config import AuditConfig
from ood_ray.stages.autoencoder import AutoencoderStage
from ood_ray.stages.base import Stage, StageResult
from ood_ray.stages.clusters import ClustersStage
from ood_ray.stages.compact import CompactStage
from ood_ray.stages.dedup import DedupStage
from ood_ray.stages.drift import DriftStage
from ood_ray.stages.embed import EmbedStage
from ood_ray.stages.finalize import FinalizeStage
from ood_ray.stages.knn import KNNStage
from ood_ray.stages.label_issues import LabelIssuesStage
from ood_ray.stages.lint import LintStage
from ood_ray.stages.ood_fit import OODFitStage
from ood_ray.stages.quality import QualityStage
from ood_ray.stages.scan import ScanStage
from ood_ray.stages.structure import StructureStage

log = logging.getLogger(__name__)

#: The stages of an audit, in order. ``embed`` runs inside the scan's pipeline (its operator
#: streams the decoded pixels to the models); every other stage runs on its own.
STAGES: tuple[Stage, ...] = (
    ScanStage(), EmbedStage(), KNNStage(), OODFitStage(), LabelIssuesStage(), StructureStage(), AutoencoderStage(), FinalizeStage(),
    CompactStage(), QualityStage(), LintStage(), DedupStage(), ClustersStage(), DriftStage(),
)


def _recorded(ctx: Any, stage: Stage) -> StageResult | None:
    """The stage's result from the ledger of a resumed run, or None when it must run."""
    if not ctx.resumed:
        return None
    record = ctx.ledger.read_stage(stage.name)
    if record is None or not stage.resumable(record.get("state", {})):
        return None
    result = StageResult.from_record(record)
    result.value = stage.load(ctx, result.state)
    ctx.timer.seconds[stage.name] = 0.0
    log.info("stage %s: done before the interruption (loaded from the ledger)", stage.name)
    return result


def run_stage(ctx: Any, stage: Stage) -> StageResult:
    """Load or run one stage, record it, and hand it to the run."""
    from ood_ray.run.context import pause_point

    result = _recorded(ctx, stage)
    if result is None:
        pause_point(f"before:{stage.name}")
        log.info("stage %s: started", stage.name)
        with ctx.timer.stage(stage.name):
            result = stage.run(ctx)
        ctx.ledger.write_stage(stage.name, result.to_record())
    ctx.absorb(stage, result)
    return result


def run_audit(config: AuditConfig, resume: bool = False, stages: tuple[Stage, ...] = STAGES) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the audit described by ``config``; returns ``run.json``."""
    from ood_ray.run.context import open_run, pause_point
    from ood_ray.run.ray_runtime import init_ray

    ctx = open_run(config, resume)
    try:
        if not ctx.local:
            init_ray(config)
        for stage in stages:
            if stage.enabled(ctx):
                run_stage(ctx, stage)
        pause_point("commit")
        run = ctx.commit(list(stages))
    finally:
        ctx.close()
    log.info("committed run %s: %d images, statuses %s", run["run_id"], run["rows_out"], run["status_counts"])
    return run
