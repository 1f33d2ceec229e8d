"""``ood-ray evaluate RUN_DIR``: how well each score of a run separates known OOD images.

The truth comes one of three ways:

- ``ood_column``: a boolean column of ``images`` (carried from the manifest): true = OOD;
- ``ood_splits``: one or more splits whose images are OOD -- one OOD set per split;
- ``ood_labels``: labels whose images are OOD (one OOD set).

In-distribution images are the ``ok`` rows of ``id_splits`` when given; otherwise every ``ok`` row
that is not OOD and not in the run's reference split (the reference fitted the scores, so it is
not a fair in-distribution sample). For every ``score_*`` column and OOD set the metrics of
:mod:`ood_ray.metrics` become one row of table ``evaluation``; with several OOD sets a row
``ood_set = 'mean'`` holds their unweighted mean, as the papers report. The table is added to
the committed run (``run.json`` rewritten atomically) and returned.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.config import ConfigError
from ood_ray.lint.issues import is_issue_column
from ood_ray.metrics import METRIC_NAMES, compute_metrics
from ood_ray.query import connect
from ood_ray.run.layout import RunLayout, committed_reference_split, read_run
from ood_ray.tables import EVALUATION_SCHEMA

log = logging.getLogger(__name__)

def _quote(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def ood_sets(con: Any, run: dict, ood_column: str | None, ood_splits: list[str], ood_labels: list[str],
             id_splits: list[str]) -> tuple[str, dict[str, str]]:
    """``(ID condition, {OOD set name: condition})`` as SQL over ``images``."""
    given = sum(bool(x) for x in (ood_column, ood_splits, ood_labels))
    if given != 1:
        raise ConfigError("evaluate: give exactly one of --ood-column, --ood-split, --ood-labels")
    columns = set(con.sql("SELECT * FROM images LIMIT 0").columns)
    if ood_column:
        if ood_column not in columns:
            raise ConfigError(f"--ood-column={ood_column!r}: not a column of images")
        sets = {ood_column: f'"{ood_column}" = true'}
        not_ood = f'coalesce("{ood_column}", false) = false'
    elif ood_splits:
        sets = {split: f"split = '{split}'" for split in ood_splits}
        not_ood = f"coalesce(split, '') NOT IN ({_quote(ood_splits)})"
    else:
        sets = {"labels:" + ",".join(ood_labels): f"label IN ({_quote(ood_labels)})"}
        not_ood = f"coalesce(label, '') NOT IN ({_quote(ood_labels)})"
    if id_splits:
        id_condition = f"split IN ({_quote(id_splits)}) AND {not_ood}"
    else:
        reference = committed_reference_split(run)
        id_condition = not_ood if reference is None else f"{not_ood} AND coalesce(split, '') <> '{reference.replace(chr(39), chr(39) * 2)}'"
    return id_condition, sets


def evaluate(out: str, ood_column: str | None = None, ood_splits: list[str] = (), ood_labels: list[str] = (),
             id_splits: list[str] = (), scores: list[str] = ()) -> pa.Table:
    """Compute, store and return the ``evaluation`` table of the run in ``out``."""
    run = read_run(out)
    con = connect(out, run)
    id_condition, sets = ood_sets(con, run, ood_column, list(ood_splits), list(ood_labels), list(id_splits))
    available = [c for c in con.sql("SELECT * FROM images LIMIT 0").columns
                 if c.startswith("score_") and not is_issue_column(c)]  # OOD scores, not the named quality issues
    chosen = list(scores) or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ConfigError(f"--score: {unknown} not in the run (scores: {', '.join(available)})")
    rows: list[dict[str, Any]] = []
    for score in chosen:
        id_scores = con.sql(f'SELECT "{score}" FROM images WHERE status = \'ok\' AND "{score}" IS NOT NULL AND {id_condition}').fetchnumpy()[score]
        per_set = []
        for name, condition in sets.items():
            ood_scores = con.sql(f'SELECT "{score}" FROM images WHERE status = \'ok\' AND "{score}" IS NOT NULL AND {condition}').fetchnumpy()[score]
            try:
                metrics = compute_metrics(id_scores, ood_scores).to_dict()
            except ValueError as exc:
                raise ConfigError(f"evaluate {score} on {name!r}: {exc}") from None
            per_set.append(metrics)
            rows.append({"score": score, "ood_set": name, **metrics})
        if len(per_set) > 1:
            mean = {key: float(np.mean([m[key] for m in per_set])) for key in METRIC_NAMES if key != "threshold"}
            rows.append({"score": score, "ood_set": "mean", "n_id": per_set[0]["n_id"],
                         "n_ood": int(sum(m["n_ood"] for m in per_set)), **mean, "threshold": None})
    con.close()
    table = pa.Table.from_pylist(rows, schema=EVALUATION_SCHEMA)
    RunLayout(out).add_table("evaluation", table, {
        "id": id_condition, "ood_sets": sets, "scores": chosen,
    })
    log.info("evaluation: %d scores x %d OOD sets written to %s", len(chosen), len(sets), out)
    return table
