"""Map: an interactive scatter of the 2-D projections (``x_<method>``, ``y_<method>``: PCA, UMAP,
t-SNE), a seeded sample of at most ``map_points`` points, coloured by cluster, label, split or a
score (the page's selector), each point's thumbnail shown on hover."""

from __future__ import annotations

from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext, ident
from ood_ray.report.sections.base import Section
from ood_ray.sampling import hash_order

CATEGORIES = ("cluster", "label", "split")


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    columns = ctx.image_columns
    methods = [c[2:] for c in columns if c.startswith("x_") and f"y_{c[2:]}" in columns]
    if not methods or ctx.options.map_points == 0:
        return None
    first = methods[0]
    scores = [c for c in columns if c.startswith("score_")]
    wanted = ["image_id", "uri"] + [c for c in CATEGORIES if c in columns] + scores
    wanted += [f"{axis}_{m}" for m in methods for axis in "xy"]
    points = ctx.rows(
        f"SELECT {', '.join(ident(c) for c in wanted)} FROM images WHERE {ident('x_' + first)} IS NOT NULL "
        f"ORDER BY {hash_order('report-' + str(ctx.options.seed))}, image_id LIMIT {ctx.options.map_points}")
    if not points:
        return None
    total = int(ctx.value(f"SELECT count(*) FROM images WHERE {ident('x_' + first)} IS NOT NULL"))
    keys = [ctx.thumb(p["image_id"], p["uri"], small=True) for p in points]
    hover = [f"{p.get('label') or ''} {p.get('split') or ''} cluster {p.get('cluster')}<br>{p['uri'][-60:]}" for p in points]
    colourings: dict[str, Any] = {}
    for name in CATEGORIES:
        if name in columns:
            colours, legend = figures.colour_codes([p[name] for p in points])
            colourings[name] = {"kind": "category", "colors": colours, "legend": dict(list(legend.items())[:40])}
    for score in scores:
        colourings[score] = {"kind": "value", "values": [p[score] for p in points]}
    coordinates = {m: {"x": [p[f"x_{m}"] for p in points], "y": [p[f"y_{m}"] for p in points]} for m in methods}
    figure = figures.scatter_map(coordinates[first]["x"], coordinates[first]["y"], hover,
                                 [[key, p["uri"].rsplit("/", 1)[-1]] for key, p in zip(keys, points)],
                                 f"map ({first}), {len(points):,} of {total:,} points", f"x_{first}", f"y_{first}")
    return {"figure": figure, "points": len(points), "total": total, "methods": methods,
            "colourings": figures.dumps(colourings), "coordinates": figures.dumps(coordinates),
            "colour_names": list(colourings), "seed": ctx.options.seed, "thumb_keys": keys}


MAP = Section("map", "Map", collect)
