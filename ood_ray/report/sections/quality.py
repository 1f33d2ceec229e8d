"""Named quality issues: per issue its definition's threshold, how many images it flags, and the
worst flagged images with their scores (the score columns of :mod:`ood_ray.lint.issues`)."""

from __future__ import annotations

from typing import Any

from ood_ray.lint.issues import ISSUES
from ood_ray.report.context import ReportContext, ident
from ood_ray.report.sections.base import Section, share

#: At most this many example images per issue.
PER_ISSUE_MAX = 8


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    quality = ctx.run.get("quality") or {}
    columns = set(ctx.image_columns)
    issues = [name for name in ISSUES if ISSUES[name].flag_column in columns]
    if not issues or not quality:
        return None
    counts = ctx.rows("SELECT " + ", ".join(f"count(*) FILTER (WHERE {ident(ISSUES[n].flag_column)}) AS {ident(n)}"
                                            for n in issues) + " FROM images")[0]
    flagged_any = ctx.value("SELECT count(*) FROM images WHERE " + " OR ".join(
        f"coalesce({ident(ISSUES[n].flag_column)}, false)" for n in issues))
    per_issue = share(ctx.options.thumbnails, sum(1 for n in issues if counts[n]), 1, PER_ISSUE_MAX)
    items = []
    for name in issues:
        issue = ISSUES[name]
        examples = []
        if counts[name] and per_issue:
            examples = ctx.rows(f"SELECT image_id, uri, label, split, {ident(issue.score_column)}::DOUBLE AS score "
                                f"FROM images WHERE {ident(issue.flag_column)} ORDER BY score DESC, image_id LIMIT {per_issue}")
            for row in examples:
                row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
        items.append({"issue": name, "threshold": (quality.get("thresholds") or {}).get(name, issue.threshold),
                      "flagged": int(counts[name] or 0), "examples": examples})
    items += label_issue_items(ctx, columns, per_issue)
    return {"issues": items, "flagged_images": int(flagged_any or 0), "odd_size": quality.get("odd_size") or {}}


def label_issue_items(ctx: ReportContext, columns: set[str], per_issue: int) -> list[dict[str, Any]]:
    """``is_label_issue`` (see :mod:`ood_ray.label_issues`) as one more row, its examples captioned
    with the given label."""
    if "is_label_issue" not in columns:
        return []
    fit = ctx.run.get("label_issues") or {}
    flagged = int(ctx.value("SELECT count(*) FROM images WHERE is_label_issue") or 0)
    examples = []
    if flagged and per_issue:
        examples = ctx.rows("SELECT image_id, uri, label, split, score_label_issue::DOUBLE AS score FROM images "
                            f"WHERE is_label_issue ORDER BY score DESC, image_id LIMIT {max(per_issue, 1)}")
        for row in examples:
            row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
            row["caption"] = f"label {row['label']} · {row['score']:.2f}"
    how = {"cl": "confident learning", "knn": "neighbour vote"}.get(fit.get("method"), "")
    return [{"issue": "label_issue", "threshold": f"{how} ({fit.get('label_model')})", "flagged": flagged,
             "examples": examples}]


QUALITY = Section("quality", "Quality issues: dark, light, blurry, ...", collect)
