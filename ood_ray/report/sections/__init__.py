"""The report's sections, in page order. Each is a :class:`Section`: a name (the HTML id), a title,
and ``collect(ctx) -> dict | None`` (``None``: the run has no data for it and the section is left
out). A section asks :attr:`ReportContext.thumbs` for the thumbnails it shows; the page template
``templates/sections/<name>.html.j2`` renders what it collected."""

from __future__ import annotations

from ood_ray.report.sections.base import Section
from ood_ray.report.sections.clusters import CLUSTERS
from ood_ray.report.sections.drift import DRIFT
from ood_ray.report.sections.duplicates import DUPLICATES
from ood_ray.report.sections.evaluation import EVALUATION
from ood_ray.report.sections.lint import LINT
from ood_ray.report.sections.map import MAP
from ood_ray.report.sections.ood import OOD
from ood_ray.report.sections.overview import OVERVIEW
from ood_ray.report.sections.quality import QUALITY

SECTIONS: tuple[Section, ...] = (OVERVIEW, LINT, QUALITY, DUPLICATES, OOD, CLUSTERS, MAP, DRIFT, EVALUATION)

__all__ = ["SECTIONS", "Section"]
