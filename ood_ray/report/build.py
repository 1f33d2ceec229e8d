"""Build a report: collect every section from the run's views, make the thumbnails in Ray tasks,
render the page.

Cost is bounded whatever the size of the run: every query is an aggregate, an ``ORDER BY ...
LIMIT`` or a seeded sample, at most ``thumbnails`` thumbnails per section and ``map_points``
points (and small thumbnails) on the map.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ood_ray.io import storage
from ood_ray.query import connect
from ood_ray.report.context import ReportContext
from ood_ray.report.options import ReportOptions
from ood_ray.report.render import render_page
from ood_ray.report.sections import SECTIONS
from ood_ray.report.thumbnails import make_thumbnails
from ood_ray.run.layout import read_run

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    path: str
    folder: str
    sections: list[str]
    thumbnails: int
    thumbnails_missing: int
    map_points: int
    bytes: int
    seconds: float
    missing: dict[str, str] = field(default_factory=dict)
    section_seconds: dict[str, float] = field(default_factory=dict)


def default_folder(out: str, run: dict[str, Any]) -> str:
    """``OUT/report`` for a local run; ``./report-<run_id>`` for a run on S3."""
    if storage.is_s3(out):
        return os.path.abspath(f"report-{run['run_id']}")
    return os.path.join(storage.local_path(out), "report")


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def build_report(out: str, to: str | None = None, options: ReportOptions | None = None,
                 address: str | None = None) -> ReportResult:
    """Write the report of the committed run in ``out`` into ``to`` (``report.html``,
    ``plotly.min.js``, ``thumbs/``, ``report.json``) and return what it holds (``bytes``: the
    whole folder; ``report.json`` holds the same figures, its own size left out)."""
    from ood_ray.run.ray_runtime import start_ray

    options = options or ReportOptions()
    started = time.perf_counter()
    out = storage.normalize_uri(out)
    run = read_run(out)
    folder = os.path.abspath(to) if to else default_folder(out, run)
    con = connect(out, run)
    ctx = ReportContext(con, run, out, options)
    sections, seconds = [], {}
    try:
        for section in SECTIONS:
            begun = time.perf_counter()
            data = section.collect(ctx)
            seconds[section.name] = round(time.perf_counter() - begun, 3)
            if data is not None:
                sections.append((section, data))
    finally:
        con.close()
    thumbs_folder = os.path.join(folder, "thumbs")
    shutil.rmtree(thumbs_folder, ignore_errors=True)
    os.makedirs(thumbs_folder, exist_ok=True)
    io_config = run.get("config", {}).get("io", {})
    limits = (int(io_config.get("max_pixels") or 178_956_970), io_config.get("max_file_bytes"),
              run.get("max_decode_bytes") or io_config.get("max_decode_bytes"))
    begun = time.perf_counter()
    if ctx.thumbs.requests:
        start_ray(address)
    made = make_thumbnails(list(ctx.thumbs.requests.values()), thumbs_folder, limits, options.thumbnail_rows)
    seconds["thumbnails"] = round(time.perf_counter() - begun, 3)
    thumbnails = {key: {"src": f"thumbs/{key}.jpg"} if t.error is None else {"error": t.error} for key, t in made.items()}
    page = render_page(run, sections, thumbnails, options)
    path = os.path.join(folder, "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    import plotly

    shutil.copyfile(os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js"),
                    os.path.join(folder, "plotly.min.js"))
    map_data = next((data for section, data in sections if section.name == "map"), None)
    result = ReportResult(
        path=path, folder=folder, sections=[s.name for s, _ in sections], thumbnails=len(made),
        thumbnails_missing=sum(1 for t in made.values() if t.error),
        missing={key: t.error for key, t in sorted(made.items()) if t.error}, map_points=map_data["points"] if map_data else 0,
        bytes=folder_bytes(folder), seconds=round(time.perf_counter() - started, 3), section_seconds=seconds)
    # report.json records the folder's size without itself, and the time up to writing it
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as handle:
        json.dump({"run_id": run["run_id"], "out": out, "options": asdict(options), **asdict(result)}, handle, indent=2)
    result.bytes = folder_bytes(folder)
    log.info("report of %s: %s (%d sections, %d thumbnails, %.1f MB, %.1f s)", out, path, len(sections),
             result.thumbnails, result.bytes / 1e6, result.seconds)
    return result
