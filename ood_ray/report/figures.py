"""Plotly figures for the report, as JSON the page renders with the bundled ``plotly.min.js``."""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

#: Colours of categories (cluster, label, split) on the map and of groups in histograms.
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
           "#9d755d", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"]

_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "template": "plotly_white", "height": 300}


def to_json(figure: go.Figure) -> str:
    """The figure as JSON (``data`` and ``layout``), safe to place in a ``<script>`` element."""
    text = pio.to_json(figure, validate=False, pretty=False, remove_uids=True)
    return text.replace("</", "<\\/")


def histogram(hist: dict[str, Any], title: str, x_title: str, lines: list[tuple[float, str]] = ()) -> str:
    """Bars of :func:`ood_ray.report.context.histogram` (groups overlaid), vertical ``lines``."""
    edges = hist["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    figure = go.Figure()
    for i, (name, counts) in enumerate(hist["counts"].items()):
        figure.add_trace(go.Bar(x=centres, y=counts, width=width, name=f"{name} ({hist['n'][name]:,})",
                                marker_color=PALETTE[i % len(PALETTE)], opacity=0.65 if len(hist["counts"]) > 1 else 0.9))
    for x, label in lines:
        figure.add_vline(x=x, line_dash="dash", line_color="#d62728", annotation_text=label, annotation_position="top")
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title="images", barmode="overlay", bargap=0,
                         showlegend=len(hist["counts"]) > 1, **_LAYOUT)
    return to_json(figure)


def bars(names: list[str], values: list[float], title: str, y_title: str) -> str:
    figure = go.Figure(go.Bar(x=names, y=values, marker_color=PALETTE[0]))
    figure.update_layout(title=title, yaxis_title=y_title, **_LAYOUT)
    return to_json(figure)


def roc(curves: list[dict[str, Any]], title: str) -> str:
    """ROC curves (``name``, ``fpr``, ``tpr``) with the chance diagonal."""
    figure = go.Figure()
    for i, curve in enumerate(curves):
        figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=curve["name"],
                                    line={"color": PALETTE[i % len(PALETTE)]}))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "#999"}))
    figure.update_layout(title=title, xaxis_title="false positive rate (ID flagged)",
                         yaxis_title="true positive rate (OOD flagged)", **{**_LAYOUT, "height": 380})
    return to_json(figure)


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
    figure = go.Figure(go.Scatter(x=x, y=y, mode="markers", text=hover, customdata=customdata,
                                  hovertemplate="%{text}<extra></extra>",
                                  marker={"size": 6, "color": PALETTE[0], "opacity": 0.8}))
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **{**_LAYOUT, "height": 560})
    return to_json(figure)


def dumps(value: Any) -> str:
    """JSON for a ``<script type="application/json">`` element."""
    return json.dumps(value, default=str).replace("</", "<\\/")
