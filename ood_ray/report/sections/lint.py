"""Lint: per linted statistic a histogram with the bounds used, the number of flags, and the most
extreme images on each side with their values (flagged ones marked)."""

from __future__ import annotations

from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext, histogram, ident, quote
from ood_ray.report.sections.base import Section, share

#: At most this many extreme images per side of a statistic.
PER_SIDE_MAX = 6


def _extremes(ctx: ReportContext, metric: str, order: str, limit: int) -> list[dict[str, Any]]:
    rows = ctx.rows(
        f"SELECT i.image_id, i.uri, i.label, i.split, {ident(metric)}::DOUBLE AS value, "
        f"EXISTS (SELECT 1 FROM lint l WHERE l.image_id = i.image_id AND l.metric = {quote(metric)}) AS flagged "
        f"FROM images i WHERE i.status = 'ok' AND {ident(metric)} IS NOT NULL AND isfinite({ident(metric)}::DOUBLE) "
        f"ORDER BY value {order}, i.image_id LIMIT {limit}")
    for row in rows:
        row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
    return rows


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    thresholds = ctx.run.get("lint_thresholds") or {}
    columns = set(ctx.image_columns)
    metrics = [m for m in sorted(thresholds) if m in columns]
    if not metrics:
        return None
    flags = {r["metric"]: r for r in ctx.rows(
        "SELECT metric, count(*) AS n, count(*) FILTER (WHERE value < lower) AS low, "
        "count(*) FILTER (WHERE value > upper) AS high FROM lint GROUP BY metric")}
    per_side = share(ctx.options.thumbnails, 2 * len(metrics), 1, PER_SIDE_MAX)
    items = []
    for metric in metrics:
        scopes = thresholds[metric]
        bounds = scopes.get("all", {})
        lines = [(bounds[side], side) for side in ("lower", "upper") if bounds.get(side) is not None]
        hist = histogram(ctx, ident(metric), "status = 'ok'", {"ok images": "true"}, ctx.options.bins)
        items.append({
            "metric": metric,
            "scopes": [{"scope": scope, **{k: v for k, v in info.items() if k != "scope"}} for scope, info in scopes.items()],
            "flags": int(flags.get(metric, {}).get("n", 0)),
            "low": int(flags.get(metric, {}).get("low", 0)), "high": int(flags.get(metric, {}).get("high", 0)),
            "figure": figures.histogram(hist, metric, metric, lines) if hist else None,
            "lowest": _extremes(ctx, metric, "ASC", per_side) if per_side else [],
            "highest": _extremes(ctx, metric, "DESC", per_side) if per_side else [],
        })
    total = ctx.value("SELECT count(*) FROM lint")
    flagged_images = ctx.value("SELECT count(DISTINCT image_id) FROM lint")
    return {"metrics": items, "flags": int(total or 0), "flagged_images": int(flagged_images or 0)}


LINT = Section("lint", "Lint: extreme values", collect)
