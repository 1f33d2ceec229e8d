"""Overview: objects in, rows out, counts per status, errors grouped (numbers in the text replaced
by ``N``) with example URIs, seconds per stage, configuration and versions."""

from __future__ import annotations

import json
from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext
from ood_ray.report.sections.base import Section

#: Error groups listed (the most frequent first) and example URIs per group.
ERROR_GROUPS = 50
ERROR_EXAMPLES = 3
#: Errors are grouped by their text with every number replaced by ``N`` (sizes and byte counts
#: differ from file to file; the kind of failure does not).
ERROR_PATTERN = "regexp_replace(coalesce(error, ''), '[0-9]+', 'N', 'g')"


def collect(ctx: ReportContext) -> dict[str, Any]:
    run = ctx.run
    statuses = ctx.rows("SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY n DESC, status")
    errors = ctx.rows(
        f"SELECT status, {ERROR_PATTERN} AS error, count(*) AS n, min(uri, {ERROR_EXAMPLES}) AS examples "
        f"FROM images WHERE status <> 'ok' GROUP BY ALL ORDER BY n DESC, status, error LIMIT {ERROR_GROUPS}")
    error_groups = ctx.value(f"SELECT count(*) FROM (SELECT DISTINCT status, {ERROR_PATTERN} FROM images WHERE status <> 'ok')")
    stages = {k: v for k, v in run.get("stage_seconds", {}).items() if k != "total_before_commit"}
    return {
        "run_id": run.get("run_id"), "committed_at": run.get("committed_at"), "source": run.get("source"),
        "executor": run.get("executor"), "objects_in": run.get("objects_in"),
        "rows_out": ctx.value("SELECT count(*) FROM images"),
        "images_per_second": run.get("images_per_second"),
        "statuses": statuses, "errors": errors, "error_groups": int(error_groups or 0),
        "stage_seconds": run.get("stage_seconds", {}),
        "stage_figure": figures.bars(list(stages), [float(v) for v in stages.values()], "seconds per stage", "seconds")
        if stages else None,
        "tables": {name: info.get("rows", 0) for name, info in run.get("tables", {}).items()},
        "versions": run.get("versions", {}),
        "config": json.dumps(run.get("config", {}), indent=2, default=str),
    }


OVERVIEW = Section("overview", "Overview", collect)
