"""What every report section reads: the run's DuckDB views (the same as ``ood-ray query``), its
``run.json``, the options, and the book of thumbnails the sections ask for.

Every number a section shows comes from a bounded DuckDB query over the run's views: aggregates,
``ORDER BY ... LIMIT`` and seeded samples, so the driver holds a bounded amount whatever the size
of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ood_ray.report.options import ReportOptions
from ood_ray.report.thumbnails import ThumbnailRequest
from ood_ray.run.layout import committed_reference_split


def quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class ThumbnailBook:
    """The thumbnails the sections asked for, one per image and size."""

    requests: dict[str, ThumbnailRequest] = field(default_factory=dict)

    def want(self, image_id: str, uri: str, px: int) -> str:
        key = f"{image_id}-{px}"
        self.requests.setdefault(key, ThumbnailRequest(key, uri, px))
        return key


@dataclass
class ReportContext:
    con: Any
    run: dict[str, Any]
    out: str
    options: ReportOptions
    thumbs: ThumbnailBook = field(default_factory=ThumbnailBook)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, values)) for values in cursor.fetchall()]

    def value(self, sql: str) -> Any:
        row = self.con.execute(sql).fetchone()
        return None if row is None else row[0]

    @cached_property
    def image_columns(self) -> list[str]:
        return self.con.sql("SELECT * FROM images LIMIT 0").columns

    @cached_property
    def numeric_columns(self) -> set[str]:
        """Columns of ``images`` with a numeric type (what a histogram can be drawn of)."""
        types = self.con.execute("SELECT column_name, column_type FROM (DESCRIBE images)").fetchall()
        numeric = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
                   "FLOAT", "DOUBLE", "DECIMAL")
        return {name for name, kind in types if str(kind).upper().startswith(numeric)}

    @property
    def reference_split(self) -> str | None:
        return committed_reference_split(self.run)

    def table_rows(self, table: str) -> int:
        return int(self.run.get("tables", {}).get(table, {}).get("rows", 0))

    def thumb(self, image_id: str, uri: str, small: bool = False) -> str:
        px = self.options.map_thumb_px if small else self.options.thumb_px
        return self.thumbs.want(image_id, uri, px)


def value_ranges(ctx: ReportContext, expressions: list[str], where: str) -> list[tuple[float | None, float | None]]:
    """``(min, max)`` of each expression's finite values among the rows of ``where``, in one scan."""
    if not expressions:
        return []
    parts = []
    for expression in expressions:
        value = f"({expression})::DOUBLE"
        keep = f"isfinite({value})"
        parts.append(f"min({value}) FILTER (WHERE {keep}), max({value}) FILTER (WHERE {keep})")
    row = ctx.con.execute(f"SELECT {', '.join(parts)} FROM images WHERE {where}").fetchone()
    return [(row[2 * i], row[2 * i + 1]) for i in range(len(expressions))]


def histogram(ctx: ReportContext, expression: str, where: str, groups: dict[str, str], bins: int,
              value_range: tuple[float | None, float | None] | None = None) -> dict[str, Any] | None:
    """Counts of ``expression`` in ``bins`` equal bins over its finite range among the rows of
    ``where``, per group (``{name: SQL condition}``; a row counts in the first group it meets).

    Returns ``{"edges": [bins + 1], "counts": {name: [bins]}, "n": {name: int}}`` or ``None`` when
    no row has a finite value."""
    value = f"({expression})::DOUBLE"
    finite = f"({where}) AND {value} IS NOT NULL AND isfinite({value})"
    if value_range is None:
        value_range = ctx.con.execute(f"SELECT min({value}), max({value}) FROM images WHERE {finite}").fetchone()
    low, high = value_range
    if low is None:
        return None
    if high <= low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    cases = " ".join(f"WHEN {condition} THEN {quote(name)}" for name, condition in groups.items())
    sql = (f"SELECT CASE {cases} END AS grp, "
           f"least(greatest(floor(({value} - {low!r}) / {width!r}), 0), {bins - 1})::INTEGER AS bin, count(*) AS n "
           f"FROM images WHERE {finite} GROUP BY ALL")
    counts = {name: [0] * bins for name in groups}
    for grp, index, n in ctx.con.execute(sql).fetchall():
        if grp is not None:
            counts[grp][index] += int(n)
    return {"edges": [low + i * width for i in range(bins)] + [high], "counts": counts,
            "n": {name: sum(values) for name, values in counts.items()}}


def roc_curve(ctx: ReportContext, score: str, id_condition: str, ood_condition: str, points: int) -> dict[str, Any] | None:
    """A ROC curve of ``score`` (higher = more OOD) with at most ``points`` thresholds: the rows are
    ranked (``percent_rank``, so tied scores share a bin) and counted per rank bin in DuckDB, and
    the curve is the cumulative share of OOD (TPR) against ID (FPR) rows from the top bin down."""
    column = ident(score)
    sql = (f"SELECT bin, count(*) FILTER (WHERE NOT o) AS id_n, count(*) FILTER (WHERE o) AS ood_n FROM ("
           f"  SELECT floor(percent_rank() OVER (ORDER BY s) * {points - 1})::INTEGER AS bin, o FROM ("
           f"    SELECT {column} AS s, coalesce({ood_condition}, false) AS o FROM images "
           f"    WHERE status = 'ok' AND {column} IS NOT NULL AND isfinite({column}::DOUBLE) AND (({id_condition}) OR ({ood_condition}))))"
           f" GROUP BY bin ORDER BY bin DESC")
    rows = ctx.con.execute(sql).fetchall()
    total_id = sum(r[1] for r in rows)
    total_ood = sum(r[2] for r in rows)
    if total_id == 0 or total_ood == 0:
        return None
    fpr, tpr = [0.0], [0.0]
    seen_id = seen_ood = 0
    for _, id_n, ood_n in rows:
        seen_id += id_n
        seen_ood += ood_n
        fpr.append(seen_id / total_id)
        tpr.append(seen_ood / total_ood)
    return {"fpr": fpr, "tpr": tpr, "n_id": total_id, "n_ood": total_ood}
