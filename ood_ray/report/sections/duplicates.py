"""Duplicates and leakage: counts per kind and method, then the largest groups of each method side
by side (every member up to ``group_members``, with its distance, split and label), groups that
span more than one split marked."""

from __future__ import annotations

from typing import Any

from ood_ray.report.context import ReportContext, quote
from ood_ray.report.sections.base import Section


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    if ctx.table_rows("duplicates") == 0:
        return None
    counts = ctx.rows("SELECT kind, method, coalesce(model, '') AS model, count(DISTINCT group_id) AS groups, "
                      "count(*) AS members FROM duplicates GROUP BY ALL ORDER BY kind, method, model")
    # the groups of the ``leakage`` view, counted without building its rows
    leaking = int(ctx.value("SELECT count(*) FROM (SELECT d.group_id FROM duplicates d JOIN images i USING (image_id) "
                            "GROUP BY d.group_id HAVING count(DISTINCT i.split) > 1)") or 0)
    budget_per_method = max(ctx.options.thumbnails // max(len(counts), 1), 1)
    shown = ctx.options.group_members
    methods = []
    for entry in counts:
        model_clause = f"coalesce(model, '') = {quote(entry['model'])}"
        groups = ctx.rows(
            f"SELECT group_id, max(group_size) AS group_size FROM duplicates WHERE kind = {quote(entry['kind'])} AND "
            f"method = {quote(entry['method'])} AND {model_clause} GROUP BY group_id ORDER BY group_size DESC, group_id "
            f"LIMIT {max(1, budget_per_method // 2)}")
        chosen, used = [], 0
        for group in groups:
            if chosen and used + min(group["group_size"], shown) > budget_per_method:
                break
            chosen.append(group)
            used += min(group["group_size"], shown)
        if not chosen:
            continue
        ids = ", ".join(quote(g["group_id"]) for g in chosen)
        members = ctx.rows(
            f"SELECT d.group_id, d.image_id, d.distance, i.uri, i.split, i.label FROM duplicates d "
            f"JOIN images i USING (image_id) WHERE d.group_id IN ({ids}) "
            f"QUALIFY row_number() OVER (PARTITION BY d.group_id ORDER BY d.distance NULLS FIRST, d.image_id) <= {shown} "
            f"ORDER BY d.group_id, d.distance NULLS FIRST, d.image_id")
        splits = {r["group_id"]: r["splits"] for r in ctx.rows(
            f"SELECT d.group_id, list(DISTINCT coalesce(i.split, '')) AS splits FROM duplicates d "
            f"JOIN images i USING (image_id) WHERE d.group_id IN ({ids}) GROUP BY d.group_id")}
        for member in members:
            member["thumb"] = ctx.thumb(member["image_id"], member["uri"])
        for group in chosen:
            group["members"] = [m for m in members if m["group_id"] == group["group_id"]]
            group["splits"] = sorted(splits.get(group["group_id"], []))
            group["cross_split"] = len(group["splits"]) > 1
            group["hidden"] = group["group_size"] - len(group["members"])
        methods.append({**entry, "groups_shown": chosen})
    return {"counts": counts, "leaking_groups": leaking, "methods": methods}


DUPLICATES = Section("duplicates", "Duplicates and leakage", collect)
