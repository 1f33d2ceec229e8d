"""Plotly figures for the report, as plotly.js JSON the page renders with the bundled ``plotly.min.js``
(the same figure format ``plotly.graph_objects`` writes; its ``plotly_white`` template)."""

from __future__ import annotations

import functools
import json
from typing import Any

import plotly.io as pio
from plotly.utils import PlotlyJSONEncoder

#: Colours of categories (cluster, label, split) on the map and of groups in histograms.
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
           "#9d755d", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"]

_MARGIN = {"l": 50, "r": 20, "t": 40, "b": 40}


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """Plotly's ``plotly_white`` template as plotly.js JSON (built once)."""
    return pio.templates["plotly_white"].to_plotly_json()


def _figure(data: list[dict[str, Any]], title: str, x_title: str, y_title: str, height: int = 300,
            **layout: Any) -> dict[str, Any]:
    """A figure as plotly.js takes it. Built as plain dicts: ``plotly.graph_objects`` validates every
    property in Python (about 0.15 s a figure), which plotly.js does again anyway."""
    return {"data": data, "layout": {"title": {"text": title}, "xaxis": {"title": {"text": x_title}},
                                     "yaxis": {"title": {"text": y_title}}, "margin": _MARGIN, "height": height,
                                     "template": _template(), **layout}}


def to_json(figure: dict[str, Any]) -> str:
    """The figure as JSON, safe to place in a ``<script>`` element."""
    return json.dumps(figure, cls=PlotlyJSONEncoder, separators=(",", ":")).replace("</", "<\\/")


def histogram(hist: dict[str, Any], title: str, x_title: str, lines: list[tuple[float, str]] = ()) -> str:
    """Bars of :func:`ood_ray.report.context.histogram` (groups overlaid), dashed vertical ``lines``."""
    edges = hist["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    several = len(hist["counts"]) > 1
    data = [{"type": "bar", "x": centres, "y": counts, "width": width, "name": f"{name} ({hist['n'][name]:,})",
             "marker": {"color": PALETTE[i % len(PALETTE)]}, "opacity": 0.65 if several else 0.9}
            for i, (name, counts) in enumerate(hist["counts"].items())]
    shapes = [{"type": "line", "x0": x, "x1": x, "xref": "x", "y0": 0, "y1": 1, "yref": "paper",
               "line": {"dash": "dash", "color": "#d62728"}} for x, _ in lines]
    annotations = [{"x": x, "xref": "x", "y": 1, "yref": "paper", "text": label, "showarrow": False,
                    "yanchor": "bottom"} for x, label in lines]
    return to_json(_figure(data, title, x_title, "images", barmode="overlay", bargap=0, showlegend=several,
                           shapes=shapes, annotations=annotations))


def bars(names: list[str], values: list[float], title: str, y_title: str) -> str:
    return to_json(_figure([{"type": "bar", "x": names, "y": values, "marker": {"color": PALETTE[0]}}], title, "", y_title))


def roc(curves: list[dict[str, Any]], title: str) -> str:
    """ROC curves (``name``, ``fpr``, ``tpr``) with the chance diagonal."""
    data = [{"type": "scatter", "mode": "lines", "x": c["fpr"], "y": c["tpr"], "name": c["name"],
             "line": {"color": PALETTE[i % len(PALETTE)]}} for i, c in enumerate(curves)]
    data.append({"type": "scatter", "mode": "lines", "x": [0, 1], "y": [0, 1], "name": "chance",
                 "line": {"dash": "dot", "color": "#999"}})
    return to_json(_figure(data, title, "false positive rate (ID flagged)", "true positive rate (OOD flagged)", 380))


def colour_codes(values: list[Any]) -> tuple[list[str], dict[str, str]]:
    """One palette colour per distinct category (most frequent first); nulls grey."""
    counts: dict[str, int] = {}
    for value in values:
        if value is not None:
            counts[str(value)] = counts.get(str(value), 0) + 1
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    legend = {value: PALETTE[i % len(PALETTE)] if i < 2 * len(PALETTE) else "#555" for i, value in enumerate(ordered)}
    return [legend.get(str(v), "#cccccc") if v is not None else "#cccccc" for v in values], legend


def scatter_map(x: list[float], y: list[float], hover: list[str], customdata: list[list[str]], title: str,
                x_title: str, y_title: str) -> str:
    """The 2-D map: one SVG scatter trace (colours are set by the page's colour selector)."""
    data = [{"type": "scatter", "mode": "markers", "x": x, "y": y, "text": hover, "customdata": customdata,
             "hovertemplate": "%{text}<extra></extra>", "marker": {"size": 6, "color": PALETTE[0], "opacity": 0.8}}]
    return to_json(_figure(data, title, x_title, y_title, 560))


def dumps(value: Any) -> str:
    """JSON for a ``<script type="application/json">`` element."""
    return json.dumps(value, default=str).replace("</", "<\\/")
