"""One shape for every report section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ood_ray.report.context import ReportContext


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    collect: Callable[[ReportContext], dict[str, Any] | None]


def share(budget: int, parts: int, each: int, cap: int) -> int:
    """How many items of ``each`` thumbnails fit ``parts`` times in ``budget`` (at most ``cap``)."""
    if parts <= 0 or each <= 0:
        return 0
    return max(0, min(cap, budget // (parts * each)))
