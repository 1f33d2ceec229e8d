"""Lint: per linted statistic a histogram with the bounds used, the number of flags, and the most
extreme images on each side with their values (flagged ones marked)."""

from __future__ import annotations

from typing import Any

from ood_ray.config import LINT_SIDE_BOUNDS
from ood_ray.report import figures
from ood_ray.report.context import ReportContext, histogram, ident, quote, value_ranges
from ood_ray.report.sections.base import Section, share

#: At most this many extreme images per side of a statistic.
PER_SIDE_MAX = 6


def _extremes(ctx: ReportContext, metrics: list[str], limit: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per metric the ``limit`` ok images with the lowest and the highest values: a top-n query per
    side over the metric and ``image_id`` only (among tied values which are shown is not fixed: a
    tie-break by ``image_id`` triples the cost of the scan), then one lookup of the shown rows."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"lowest": [], "highest": []} for m in metrics}
    if limit == 0:
        return out
    shown: set[str] = set()
    for m in metrics:
        value = f"{ident(m)}::DOUBLE"
        for side, order in (("lowest", "ASC"), ("highest", "DESC")):
            rows = ctx.rows(f"SELECT image_id, {value} AS value FROM images WHERE status = 'ok' AND {value} IS NOT NULL "
                            f"AND isfinite({value}) ORDER BY value {order} LIMIT {limit}")
            out[m][side] = sorted(rows, key=lambda r: (r["value"] if order == "ASC" else -r["value"], r["image_id"]))
            shown.update(r["image_id"] for r in rows)
    if shown:
        listed = ", ".join(quote(i) for i in sorted(shown))
        about = {r["image_id"]: r for r in ctx.rows(f"SELECT image_id, uri, label, split FROM images WHERE image_id IN ({listed})")}
        for sides in out.values():
            for rows in sides.values():
                for row in rows:
                    row.update(about[row["image_id"]])
                    row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
    return out


def _mark_flagged(ctx: ReportContext, items: list[dict[str, Any]]) -> None:
    """Whether each shown image is flagged on its metric: one lookup in ``lint`` for the shown
    images only (a lookup per row costs a scan of ``lint`` each)."""
    shown = {row["image_id"] for item in items for side in ("lowest", "highest") for row in item[side]}
    flagged: set[tuple[str, str]] = set()
    if shown:
        listed = ", ".join(quote(i) for i in sorted(shown))
        flagged = {(r["metric"], r["image_id"]) for r in ctx.rows(
            f"SELECT DISTINCT metric, image_id FROM lint WHERE image_id IN ({listed})")}
    for item in items:
        for side in ("lowest", "highest"):
            for row in item[side]:
                row["flagged"] = (item["metric"], row["image_id"]) in flagged


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
    ranges = value_ranges(ctx, [ident(m) for m in metrics], "status = 'ok'")
    extremes = _extremes(ctx, metrics, per_side)
    items = []
    for metric, value_range in zip(metrics, ranges):
        scopes = thresholds[metric]
        bounds = scopes.get("all", {})
        lines = [(bounds[side], side) for side in LINT_SIDE_BOUNDS[bounds.get("side", "both")]
                 if bounds.get(side) is not None]
        hist = histogram(ctx, ident(metric), "status = 'ok'", {"ok images": "true"}, ctx.options.bins, value_range)
        items.append({
            "metric": metric,
            "scopes": [{"scope": scope, **{k: v for k, v in info.items() if k != "scope"}} for scope, info in scopes.items()],
            "flags": int(flags.get(metric, {}).get("n", 0)),
            "low": int(flags.get(metric, {}).get("low", 0)), "high": int(flags.get(metric, {}).get("high", 0)),
            "figure": figures.histogram(hist, metric, metric, lines) if hist else None,
            **extremes[metric],
        })
    _mark_flagged(ctx, items)
    total = ctx.value("SELECT count(*) FROM lint")
    flagged_images = ctx.value("SELECT count(DISTINCT image_id) FROM lint")
    return {"metrics": items, "flags": int(total or 0), "flagged_images": int(flagged_images or 0)}


LINT = Section("lint", "Lint: extreme values", collect)
