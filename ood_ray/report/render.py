"""The page: Jinja2 templates shipped in the package, style and script inlined."""

from __future__ import annotations

import datetime
import importlib.resources
import math
from typing import Any

import jinja2

from ood_ray.report.figures import dumps
from ood_ray.report.options import ReportOptions


def _asset(name: str) -> str:
    return importlib.resources.files("ood_ray.report").joinpath("assets", name).read_text(encoding="utf-8")


def number(value: Any, digits: int = 4) -> str:
    """A number for people: integers with separators, floats with ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("ood_ray.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["number"] = number
    return env


def render_page(run: dict[str, Any], sections: list[tuple[Any, dict[str, Any]]], thumbnails: dict[str, dict[str, str]],
                options: ReportOptions) -> str:
    template = environment().get_template("report.html.j2")

    def thumb_sources(keys: list[str]) -> str:
        """``{key: src or null}`` for the page's script (the map's hover thumbnails)."""
        return dumps({key: thumbnails.get(key, {}).get("src") for key in keys})

    return template.render(run=run, sections=sections, thumbnails=thumbnails, options=options, thumb_sources=thumb_sources,
                           style=_asset("report.css"), script=_asset("report.js"),
                           built_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
