"""Out of distribution: per score, the distribution of the reference rows against the others with
the threshold drawn, how many rows are flagged, the highest-scoring images with their scores and,
for each, its nearest reference images from ``neighbors``."""

from __future__ import annotations

from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext, histogram, ident, quote
from ood_ray.report.sections.base import Section, share

#: At most this many top images per score.
TOP_MAX = 6


def score_model(score: str, aliases: list[str]) -> str | None:
    """The model a score column belongs to (``score_<detector>_<alias>``), longest alias first."""
    for alias in sorted(aliases, key=len, reverse=True):
        if score.endswith("_" + alias):
            return alias
    return None


def _neighbors(ctx: ReportContext, model: str, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not ids or ctx.options.neighbors == 0 or ctx.table_rows("neighbors") == 0:
        return {}
    listed = ", ".join(quote(i) for i in ids)
    rows = ctx.rows(
        f"SELECT n.image_id, n.rank, n.neighbor_id, n.distance, r.uri, r.label, r.split FROM neighbors n "
        f"JOIN images r ON r.image_id = n.neighbor_id WHERE n.model = {quote(model)} AND n.image_id IN ({listed}) "
        f"AND n.rank <= {ctx.options.neighbors} ORDER BY n.image_id, n.rank")
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        row["thumb"] = ctx.thumb(row["neighbor_id"], row["uri"])
        found.setdefault(row["image_id"], []).append(row)
    return found


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    ood = ctx.run.get("ood") or {}
    thresholds = ood.get("thresholds") or {}
    columns = set(ctx.image_columns)
    scores = [s for s in thresholds if s in columns]
    if not scores:
        return None
    aliases = [m.get("alias") for m in ood.get("models", []) if m.get("alias")]
    reference = ctx.reference_split
    if reference is not None:
        groups = {f"reference ({reference})": f"split = {quote(reference)}", "other rows": "true"}
    else:
        groups = {"all rows": "true"}
    top = share(ctx.options.thumbnails, len(scores), 1 + ctx.options.neighbors, TOP_MAX)
    items = []
    for score in scores:
        info = thresholds[score]
        threshold = info.get("threshold")
        flag = f"is_ood_{score.removeprefix('score_')}"
        flagged = ctx.value(f"SELECT count(*) FILTER (WHERE {ident(flag)}) FROM images") if flag in columns else None
        hist = histogram(ctx, ident(score), "status = 'ok'", groups, ctx.options.bins)
        lines = [(threshold, "threshold")] if threshold is not None else []
        examples = ctx.rows(
            f"SELECT image_id, uri, split, label, {ident(score)}::DOUBLE AS score FROM images WHERE status = 'ok' "
            f"AND {ident(score)} IS NOT NULL AND isfinite({ident(score)}::DOUBLE) "
            f"ORDER BY score DESC, image_id LIMIT {top}") if top else []
        model = score_model(score, aliases)
        neighbours = _neighbors(ctx, model, [e["image_id"] for e in examples]) if model else {}
        for example in examples:
            example["thumb"] = ctx.thumb(example["image_id"], example["uri"])
            example["neighbors"] = neighbours.get(example["image_id"], [])
        items.append({"score": score, "threshold": threshold, "quantile": info.get("quantile"),
                      "n_reference": info.get("n_reference"), "flag": flag if flag in columns else None,
                      "flagged": None if flagged is None else int(flagged), "model": model,
                      "figure": figures.histogram(hist, score, "score (higher = more OOD)", lines) if hist else None,
                      "examples": examples})
    return {"reference": ood.get("reference"), "quantile": ood.get("in_distribution_quantile"), "scores": items}


OOD = Section("ood", "Out of distribution", collect)
