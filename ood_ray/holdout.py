"""The holdout-class protocol (MixOE, Zhang et al., WACV 2023): OOD from your own labelled data.

Some classes are held out -- named, or drawn at random under a seed -- and treated as OOD; the
other classes are the in-distribution data:

- the held-out classes' rows of the reference split move to split ``holdout_reference``: they are
  audited (rows out == objects in) but never reach the reference, so nothing fitted on the
  reference (kNN index, probes, Mahalanobis, thresholds) has seen them;
- their other rows move to split ``holdout``: the OOD set;
- every other row keeps its split; the in-distribution set of the evaluation is ``id_split``.

Then the audit runs on that manifest and ``evaluation`` is computed with ``ood_splits=["holdout"]``.
Scores from classifiers trained on all classes are not fair here (the model has seen the held-out
classes); scores fitted on the reference are. Reproducible: the same seed holds out the same
classes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage
from ood_ray.run.layout import RunLayout, read_run
from ood_ray.io.sources import build_manifest
from ood_ray.columns import INPUT_ERROR
from ood_ray.tables import RESERVED_COLUMNS

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
HOLDOUT_REFERENCE = "holdout_reference"


def choose_classes(labels: list[str], classes: list[str] | None, count: int | None, seed: int) -> list[str]:
    """The held-out classes: ``classes`` as given, or ``count`` drawn under ``seed``."""
    available = sorted(set(label for label in labels if label is not None))
    if classes:
        unknown = sorted(set(classes) - set(available))
        if unknown:
            raise ConfigError(f"--holdout-classes: {unknown} are not labels of the data ({', '.join(available)})")
        chosen = sorted(classes)
    else:
        if not count or not 0 < count < len(available):
            raise ConfigError(f"--holdout-count={count!r}: must be between 1 and {len(available) - 1} ({len(available)} labels)")
        chosen = sorted(np.random.default_rng(seed).choice(available, size=count, replace=False).tolist())
    if len(chosen) >= len(available):
        raise ConfigError("holdout: at least one class must stay in distribution")
    return chosen


def holdout_manifest(manifest: pa.Table, held_out: list[str], reference_split: str) -> pa.Table:
    """The manifest with the held-out classes moved to ``holdout`` / ``holdout_reference``."""
    is_held = pc.fill_null(pc.is_in(manifest.column("label"), pa.array(held_out, pa.string())), False)
    in_reference = pc.fill_null(pc.equal(manifest.column("split"), reference_split), False)
    split = pc.if_else(is_held, pc.if_else(in_reference, HOLDOUT_REFERENCE, HOLDOUT), manifest.column("split"))
    return manifest.set_column(manifest.column_names.index("split"), "split", split)


def run_holdout(config: AuditConfig, classes: list[str] | None, count: int | None, seed: int,
                id_split: str = "test") -> dict[str, Any]:
    """Write the holdout manifest into ``OUT``, audit it, evaluate every score; returns the run."""
    from ood_ray.evaluate import evaluate
    from ood_ray.pipeline import run_audit

    manifest = build_manifest(config, RESERVED_COLUMNS)
    held_out = choose_classes(manifest.column("label").to_pylist(), classes, count, seed)
    table = holdout_manifest(manifest, held_out, config.ood.reference_split)
    table = table.drop_columns([c for c in ("image_id", "listed_size", INPUT_ERROR) if c in table.column_names])
    uri = storage.join(storage.normalize_uri(config.out), "holdout_manifest.parquet")
    fs, path = storage.resolve(uri)
    storage.make_parent_dirs(uri)
    pq.write_table(table, path, filesystem=fs)
    log.info("holdout: %s held out (seed %d); manifest %s", held_out, seed, uri)
    run_audit(dataclasses.replace(config, source=uri))
    RunLayout(config.out).annotate("holdout", {"classes": held_out, "seed": seed, "id_split": id_split,
                                                  "manifest": "holdout_manifest.parquet"})
    evaluate(config.out, ood_splits=[HOLDOUT], id_splits=[id_split])
    return read_run(config.out)
