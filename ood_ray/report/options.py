"""The report's options: every bound on its cost, checked at once (a bad value fails with its key)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ood_ray.config import ConfigError


@dataclass(frozen=True)
class ReportOptions:
    """What a report may cost, whatever the size of the run.

    - ``thumbnails``: at most this many thumbnails per section (lint, duplicates, OOD, clusters);
    - ``map_points``: at most this many points on the map (a seeded sample), each with a small
      thumbnail shown on hover;
    - ``thumb_px`` / ``map_thumb_px``: the longest side of a section / map thumbnail;
    - ``bins``: histogram bins; ``roc_points``: points per ROC curve;
    - ``group_members``: members shown per duplicate group (the rest counted);
    - ``neighbors``: nearest reference images shown per OOD example;
    - ``seed``: the map sample (``hash(image_id || '#report-<seed>')``);
    - ``thumbnail_rows``: objects per thumbnail task.
    """

    thumbnails: int = 120
    map_points: int = 2000
    thumb_px: int = 128
    map_thumb_px: int = 64
    bins: int = 40
    roc_points: int = 200
    group_members: int = 12
    neighbors: int = 3
    seed: int = 0
    thumbnail_rows: int = 64

    def __post_init__(self) -> None:
        minimum = {"thumbnails": 0, "map_points": 0, "thumb_px": 16, "map_thumb_px": 16, "bins": 2,
                   "roc_points": 2, "group_members": 2, "neighbors": 0, "seed": 0, "thumbnail_rows": 1}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum[item.name]:
                raise ConfigError(f"report.{item.name}={value!r}: expected an integer >= {minimum[item.name]}")
