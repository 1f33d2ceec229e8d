"""``ood-ray report``: a static, self-contained HTML report of a committed run.

See :func:`ood_ray.report.build.build_report`. The page opens from disk with no server and no
network: its style and script are inlined, Plotly's bundled ``plotly.min.js`` is copied beside it,
and thumbnails are JPEG files in ``thumbs/``. (The builder is imported on first use, so that the
CLI's option checks stay fast.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportOptions", "ReportResult", "build_report"]


def __getattr__(name: str) -> Any:
    if name in ("ReportResult", "build_report"):
        from ood_ray.report import build

        return getattr(build, name)
    if name == "ReportOptions":
        from ood_ray.report.options import ReportOptions

        return ReportOptions
    raise AttributeError(name)
