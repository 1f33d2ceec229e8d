"""Duplicate groups from hashes: exact (``hash_pixels``) and near (``phash``/``dhash``).

**Exact**: images with the same ``hash_pixels`` (same dtype, shape and pixels) form one group,
``kind = 'exact'``, ``method = 'pixel'``, ``distance = 0``.

**Near** (per method): two images are near duplicates when the Hamming distance of their 64-bit
hashes is at most ``d`` (``dedup.near_distance``, default 4). DataEval groups identical hashes only
and misses a pair one bit apart. We find every pair within ``d`` without comparing all pairs by
multi-index hashing (Norouzi et al., CVPR 2012): the 64 bits are cut into ``m > d`` bands
(``dedup.bands``, default ``d + 2``); two hashes within ``d`` bits differ in at most ``d`` bands,
so they agree exactly on at least ``m - d`` of them (pigeonhole). For each of the ``C(m, d)``
choices of ``m - d`` bands, hashes are bucketed by those bits; pairs are taken inside buckets and
kept when their full distance is ``<= d``. More bands means longer keys, smaller buckets and more
keys per hash.

The join runs in DuckDB over **distinct** hash values, so thousands of identical hashes (all-black
images, say) are one value, not a million pairs. Buckets that still hold more than
``dedup.max_bucket`` distinct values are skipped and reported (their pairs may still be found
through another band combination). Pairs are joined into groups by connected components
(union-find); a near group is reported when it holds at least two images and more than one
distinct ``hash_pixels`` (a group of pixel-identical images is already an exact group). Each
member's ``distance`` is its smallest Hamming distance to another member of its group.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ood_ray.config import DedupConfig
from ood_ray.dedup.components import compute_components
from ood_ray.tables import DUPLICATES_SCHEMA

log = logging.getLogger(__name__)

HASH_BITS = 64


def band_masks(bands: int, distance: int) -> list[int]:
    """One 64-bit mask per choice of ``bands - distance`` of ``bands`` near-equal bit bands."""
    edges = np.linspace(0, HASH_BITS, bands + 1).round().astype(int)
    band_bits = [((1 << int(hi - lo)) - 1) << int(lo) for lo, hi in zip(edges[:-1], edges[1:])]
    masks = []
    for chosen in itertools.combinations(range(bands), bands - distance):
        mask = 0
        for index in chosen:
            mask |= band_bits[index]
        masks.append(mask)
    return masks


def find_exact_groups(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Groups of images with identical ``hash_pixels``."""
    return con.sql(
        """SELECT 'exact-pixel-' || substr(hash_pixels, 1, 16) AS group_id, image_id, 'exact' AS kind,
                  'pixel' AS method, 0.0 AS distance, count(*) OVER (PARTITION BY hash_pixels) AS group_size,
                  NULL::VARCHAR AS model
           FROM images
           WHERE status = 'ok' AND hash_pixels IN (
               SELECT hash_pixels FROM images WHERE status = 'ok' GROUP BY hash_pixels HAVING count(*) > 1)
           ORDER BY group_id, image_id""").to_arrow_table()


def find_near_pairs(
    con: duckdb.DuckDBPyConnection, method: str, config: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Distinct hash pairs ``(h1 < h2)`` within ``near_distance`` bits, and the skipped buckets."""
    distance = config.near_distance
    masks = band_masks(config.effective_bands, distance)
    con.register("_masks", pa.table({"c": list(range(len(masks))), "mask": pa.array(masks, pa.uint64())}))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _hashes AS SELECT DISTINCT {method} AS h FROM images WHERE status = 'ok' AND {method} IS NOT NULL")
    con.execute("CREATE OR REPLACE TEMP TABLE _keys AS SELECT c, h & mask AS key, h FROM _hashes, _masks")
    big = con.execute(
        f"SELECT c, key, count(*) AS n FROM _keys GROUP BY c, key HAVING count(*) > {int(config.max_bucket)}"
    ).fetchall()
    skipped = [{"method": method, "band_combination": int(c), "key": int(key), "distinct_hashes": int(n)} for c, key, n in big]
    if skipped:
        log.warning("dedup %s: skipping %d buckets larger than max_bucket=%d (largest %d)", method, len(skipped),
                    config.max_bucket, max(s["distinct_hashes"] for s in skipped))
        con.execute(
            f"DELETE FROM _keys WHERE (c, key) IN (SELECT c, key FROM _keys GROUP BY c, key HAVING count(*) > {int(config.max_bucket)})"
        )
    pairs = con.sql(
        f"""SELECT DISTINCT a.h AS h1, b.h AS h2, bit_count(xor(a.h, b.h)) AS d
            FROM _keys a JOIN _keys b ON a.c = b.c AND a.key = b.key AND a.h < b.h
            WHERE bit_count(xor(a.h, b.h)) <= {distance}""").to_arrow_table()
    con.unregister("_masks")
    return (
        pairs.column("h1").to_numpy().astype(np.uint64),
        pairs.column("h2").to_numpy().astype(np.uint64),
        pairs.column("d").to_numpy().astype(np.int64),
        skipped,
    )


def find_near_groups(con: duckdb.DuckDBPyConnection, method: str, config: DedupConfig) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Near-duplicate groups by one perceptual hash (see module docstring)."""
    h1, h2, dist, skipped = find_near_pairs(con, method, config)
    con.register("_pair_hashes", pa.table({"h": pa.array(np.concatenate([h1, h2]), pa.uint64())}))
    members = con.sql(
        f"""SELECT image_id, {method} AS h, hash_pixels FROM images
            WHERE status = 'ok' AND ({method} IN (SELECT h FROM _pair_hashes)
                  OR {method} IN (SELECT {method} FROM images WHERE status = 'ok' AND {method} IS NOT NULL
                                  GROUP BY {method} HAVING count(*) > 1))
            ORDER BY image_id""").to_arrow_table()
    con.unregister("_pair_hashes")
    if members.num_rows == 0:
        return DUPLICATES_SCHEMA.empty_table(), skipped

    hashes = members.column("h").to_numpy().astype(np.uint64)
    values, node = np.unique(hashes, return_inverse=True)
    labels = compute_components(len(values), np.searchsorted(values, h1), np.searchsorted(values, h2))

    # Smallest distance from each hash value to another member: 0 when shared by two images.
    nearest = np.full(len(values), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(nearest, np.searchsorted(values, h1), dist)
    np.minimum.at(nearest, np.searchsorted(values, h2), dist)
    nearest[np.bincount(node, minlength=len(values)) > 1] = 0

    image_ids = np.asarray(members.column("image_id").to_pylist(), dtype=object)
    pixel_hashes = np.asarray(members.column("hash_pixels").to_pylist(), dtype=object)
    group_of_image = labels[node]
    rows: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    order = np.argsort(group_of_image, kind="stable")
    boundaries = np.flatnonzero(np.diff(group_of_image[order])) + 1
    for indices in np.split(order, boundaries):
        if len(indices) < 2 or len(set(pixel_hashes[indices])) < 2:
            continue
        ids = image_ids[indices]
        group_id = f"near-{method}-{min(ids)[:16]}"
        for i, image_id in zip(indices, ids):
            rows["group_id"].append(group_id)
            rows["image_id"].append(image_id)
            rows["kind"].append("near")
            rows["method"].append(method)
            rows["distance"].append(float(nearest[node[i]]))
            rows["group_size"].append(len(indices))
            rows["model"].append(None)
    return pa.Table.from_pydict(rows, schema=DUPLICATES_SCHEMA), skipped


def run_dedup(con: duckdb.DuckDBPyConnection, config: DedupConfig, embedding_groups: pa.Table | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The ``duplicates`` table (exact, near per hash method, then embedding groups when given)
    and a summary for ``run.json``."""
    parts = [find_exact_groups(con).cast(DUPLICATES_SCHEMA)]
    summary: dict[str, Any] = {
        "near_distance": config.near_distance, "bands": config.effective_bands,
        "max_bucket": config.max_bucket, "skipped_buckets": [],
    }
    for method in config.near_methods:
        table, skipped = find_near_groups(con, method, config)
        parts.append(table)
        summary["skipped_buckets"].extend(skipped)
    if embedding_groups is not None:
        parts.append(embedding_groups)
    duplicates = pa.concat_tables(parts)
    groups = {}
    for kind, method, group_id in zip(*(duplicates.column(c).to_pylist() for c in ("kind", "method", "group_id"))):
        groups.setdefault(f"{kind}/{method}", set()).add(group_id)
    summary["groups"] = {key: len(ids) for key, ids in sorted(groups.items())}
    log.info("dedup: %s", ", ".join(f"{k} {v} groups" for k, v in summary["groups"].items()) or "no duplicates")
    return duplicates, summary
