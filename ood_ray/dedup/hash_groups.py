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

The join is a hash-partitioned map/reduce in Ray tasks over the ``images`` parts
(:meth:`ood_ray.parts.Parts.shuffle`): each map task emits, per band combination, the **distinct**
hashes of its parts, partitioned by ``(combination, key)`` (8 bytes a hash, the combination implied
by position, the key recomputed); each reduce task permutes a combination's hashes so that the key
bands come first (:class:`KeyFirst`), sorts them once as ``uint64`` -- buckets are then runs of
equal top bits -- and pairs the hashes inside each bucket, keeping those within ``d`` bits (a
permutation of bits keeps Hamming distances). Thousands of identical hashes (all-black images, say) are one value, not a
million pairs. Buckets that still hold more than ``dedup.max_bucket`` distinct values are skipped
and reported (their pairs may still be found through another band combination). The same shuffle
groups ``hash_pixels`` (exact groups) and counts hashes held by more than one image. The driver
receives only pairs and group members; pairs are joined into groups by connected components
(union-find); a near group is reported when it holds at least two images and more than one
distinct ``hash_pixels`` (a group of pixel-identical images is already an exact group). Each
member's ``distance`` is its smallest Hamming distance to another member of its group.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from ood_ray.config import DedupConfig
from ood_ray.dedup.components import compute_components
from ood_ray.parts import Parts
from ood_ray.dedup.linkage import cut_components, hamming_matrix, split_component
from ood_ray.stats.centre import CROP_COLUMN, CROP_METHOD
from ood_ray.stats.d4 import D4_METHODS, PHASH_D4_CHECK, THUMBNAIL_COLUMN, d4_methods, relation, transform
from ood_ray.stats.hashes import THUMBNAIL_SIZE, THUMBNAIL_VALUES
from ood_ray.tables import DUPLICATE_PAIRS_SCHEMA, DUPLICATES_SCHEMA

log = logging.getLogger(__name__)

HASH_BITS = 64


def band_edges(bands: int) -> np.ndarray:
    """Bit positions cutting the 64 bits into ``bands`` contiguous bands of near-equal width."""
    return np.linspace(0, HASH_BITS, bands + 1).round().astype(int)


def band_combinations(bands: int, distance: int) -> list[tuple[int, ...]]:
    """Every choice of ``bands - distance`` of ``bands`` bands (the key of one bucketing)."""
    return list(itertools.combinations(range(bands), bands - distance))


def band_masks(bands: int, distance: int) -> list[int]:
    """One 64-bit mask per choice of ``bands - distance`` of ``bands`` near-equal bit bands (the
    plain formula; :class:`KeyFirst` builds the same masks from its moves, tested equal)."""
    edges = band_edges(bands)
    return [sum(((1 << int(edges[i + 1] - edges[i])) - 1) << int(edges[i]) for i in chosen)
            for chosen in band_combinations(bands, distance)]


class KeyFirst:
    """A bit permutation that moves one combination's key bands to the top of the word, the other
    bands below them (each band keeps its bit order). Sorting the permuted hashes sorts them by
    key, then by the rest: one ``uint64`` sort makes the buckets, and since a permutation of bits
    keeps Hamming distances, pairs are found on the permuted values and only they are mapped back."""

    def __init__(self, edges: np.ndarray, chosen: tuple[int, ...]) -> None:
        bands = len(edges) - 1
        order = [*chosen, *[b for b in range(bands) if b not in chosen]]
        self.moves = []  # (source shift, width mask, target shift)
        top = HASH_BITS
        for band in order:
            lo, width = int(edges[band]), int(edges[band + 1] - edges[band])
            top -= width
            self.moves.append((np.uint64(lo), np.uint64((1 << width) - 1), np.uint64(top)))
        keys = self.moves[:len(chosen)]
        self.key_bits = HASH_BITS - int(keys[-1][2])  # the key bands fill the top of the word
        self.mask = np.uint64(sum(int(width) << int(source) for source, width, _ in keys))

    def forward(self, hashes: np.ndarray) -> np.ndarray:
        out = np.zeros(len(hashes), np.uint64)
        for source, width, target in self.moves:
            out |= ((hashes >> source) & width) << target
        return out

    def backward(self, permuted: np.ndarray) -> np.ndarray:
        out = np.zeros(len(permuted), np.uint64)
        for source, width, target in self.moves:
            out |= ((permuted >> target) & width) << source
        return out

    def bucket(self, permuted: np.ndarray) -> np.ndarray:
        """The key of each permuted value (its top ``key_bits``)."""
        return permuted >> np.uint64(HASH_BITS - self.key_bits) if self.key_bits < HASH_BITS else permuted


def key_orders(bands: int, distance: int) -> list[KeyFirst]:
    edges = band_edges(bands)
    return [KeyFirst(edges, chosen) for chosen in band_combinations(bands, distance)]


def _mix(values: np.ndarray) -> np.ndarray:
    """A 64-bit mixer (SplitMix64's finaliser) so that partitions are even whatever the keys."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _ok(table: pa.Table) -> pa.Table:
    return table.filter(pc.fill_null(pc.equal(table.column("status"), "ok"), False))


def _hashes(table: pa.Table, method: str) -> np.ndarray:
    """The non-null hash values a method joins: its column's; for ``phash_crop`` the full ``phash``
    and every centre hash (the join pairs values; which pairs are crop pairs is decided per image
    afterwards, :func:`crop_links`)."""
    if method == CROP_METHOD:
        full = _hashes(table, "phash") if "phash" in table.column_names else np.zeros(0, np.uint64)
        centres = pc.list_flatten(table.column(CROP_COLUMN)).drop_null().to_numpy().astype(np.uint64)
        return np.concatenate([full, centres])
    column = table.column(method)
    return column.drop_null().to_numpy().astype(np.uint64) if column.null_count else column.to_numpy().astype(np.uint64)


def _partition_order(owner: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """A stable order grouping rows by partition, and where each partition starts and ends in it
    (as 16-bit keys NumPy's stable sort is a radix sort)."""
    keys = owner.astype(np.uint16) if partitions <= 1 << 16 else owner
    return np.argsort(keys, kind="stable"), np.r_[0, np.cumsum(np.bincount(owner, minlength=partitions))]


def _split(values: np.ndarray, owner: np.ndarray, partitions: int) -> list[np.ndarray]:
    """``values`` cut into one array per partition (``owner``: each value's partition)."""
    order, bounds = _partition_order(owner, partitions)
    values = values[order]
    return [values[bounds[p]:bounds[p + 1]] for p in range(partitions)]


def map_hashes(table: pa.Table, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One part's contribution to every partition: its ``ok`` rows' ``hash_pixels`` with their
    ``image_id`` (exact groups); per near method and band combination the distinct hashes whose
    ``(combination, key)`` the partition owns, and the distinct hashes with their number of images."""
    partitions = spec["partitions"]
    table = _ok(table)
    out: list[dict[str, Any]] = [{"exact": None, "keys": {}, "counts": {}} for _ in range(partitions)]
    pixels = table.select(["hash_pixels", "image_id"]).filter(pc.is_valid(table.column("hash_pixels")))
    pixel_part = np.array([xxhash.xxh3_64_intdigest(h.encode()) for h in pixels.column("hash_pixels").to_pylist()], dtype=np.uint64)
    pixel_part = (_mix(pixel_part) % np.uint64(partitions)).astype(np.intp)
    order, bounds = _partition_order(pixel_part, partitions)
    pixels = pixels.take(pa.array(order))
    for p in range(partitions):
        out[p]["exact"] = pixels.slice(bounds[p], bounds[p + 1] - bounds[p])
    for method in spec["methods"]:
        if method not in table.column_names:
            continue
        hashes, counts = np.unique(_hashes(table, method), return_counts=True)
        owner = (_mix(hashes) % np.uint64(partitions)).astype(np.intp)
        for p, (mine, many) in enumerate(zip(_split(hashes, owner, partitions), _split(counts, owner, partitions))):
            out[p]["counts"][method] = (mine, many)
        for c, order in enumerate(key_orders(spec["bands"], spec["distance"])):
            owner = (_mix((hashes & order.mask) ^ _mix(np.uint64(c))) % np.uint64(partitions)).astype(np.intp)
            for p, mine in enumerate(_split(hashes, owner, partitions)):
                out[p]["keys"].setdefault(method, []).append(mine)
    return out


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (a sort and a neighbour comparison: NumPy 2.4's ``np.unique``
    hashes and then sorts, fifty times slower on four million ``uint64``)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _distinct_rows(*columns: np.ndarray) -> np.ndarray:
    """The distinct rows of equal-length ``uint64`` columns, sorted by the first column, then the
    next (``np.lexsort`` and a neighbour comparison: ``np.unique(axis=0)`` sorts ten times slower)."""
    if len(columns[0]) == 0:
        return np.zeros((0, len(columns)), np.uint64)
    order = np.lexsort(columns[::-1])
    rows = np.stack([c[order] for c in columns], axis=1).astype(np.uint64, copy=False)
    new = np.r_[True, np.any(rows[1:] != rows[:-1], axis=1)]
    return rows[new]


def _bucket_pairs(hashes: np.ndarray, order: KeyFirst, distance: int, max_bucket: int
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Pairs ``(h1, h2)`` within ``distance`` bits that share one combination's key, and the
    buckets over ``max_bucket`` distinct hashes, skipped, as ``(key, size)``."""
    permuted = _distinct(order.forward(hashes))  # sorted by key, then by the other bands
    empty = np.zeros(0, np.uint64)
    if len(permuted) < 2:
        return empty, empty, []
    keys = order.bucket(permuted)
    bucket_start = np.r_[True, keys[1:] != keys[:-1]]
    bucket = np.cumsum(bucket_start) - 1
    sizes = np.bincount(bucket)
    big = np.flatnonzero(sizes > max_bucket)
    skipped = []
    if big.size:
        firsts = np.flatnonzero(bucket_start)[big]
        skipped = [(int(order.backward(permuted[i:i + 1])[0] & order.mask), int(sizes[b])) for i, b in zip(firsts, big)]
        keep = sizes[bucket] <= max_bucket
        permuted, bucket = permuted[keep], bucket[keep]
    found_a, found_b = [], []
    for offset in range(1, int(min(sizes.max(), max_bucket))):
        same = bucket[offset:] == bucket[:-offset]
        if not same.any():
            break
        a, b = permuted[:-offset][same], permuted[offset:][same]
        near = np.bitwise_count(a ^ b) <= distance  # a permutation of bits keeps the distance
        found_a.append(a[near])
        found_b.append(b[near])
    if not found_a:
        return empty, empty, skipped
    h1, h2 = order.backward(np.concatenate(found_a)), order.backward(np.concatenate(found_b))
    return np.minimum(h1, h2), np.maximum(h1, h2), skipped


def _distinct_pairs(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs ``(h1 < h2)`` sorted, with their Hamming distance."""
    pairs = _distinct_rows(h1, h2)
    h1, h2 = pairs[:, 0], pairs[:, 1]
    return h1, h2, np.bitwise_count(h1 ^ h2).astype(np.int64)


def reduce_hashes(results: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """One partition: its exact groups, and per near method its pairs, skipped buckets and the
    hashes that more than one image holds."""
    exact = pa.concat_tables([r["exact"] for r in results]) if results else None
    out: dict[str, Any] = {"exact": None, "pairs": {}, "skipped": {}, "shared": {}}
    if exact is not None and exact.num_rows:
        counts = exact.group_by("hash_pixels").aggregate([("image_id", "count")])
        repeated = counts.filter(pc.greater(counts.column("image_id_count"), 1))
        out["exact"] = exact.filter(pc.is_in(exact.column("hash_pixels"), repeated.column("hash_pixels")))
    for method in spec["methods"]:
        keys = [r["keys"][method] for r in results if method in r["keys"]]
        if not keys:
            continue
        found_a, found_b, skipped = [], [], []
        for c, order in enumerate(key_orders(spec["bands"], spec["distance"])):
            h1, h2, big = _bucket_pairs(np.concatenate([k[c] for k in keys]), order, spec["distance"], spec["max_bucket"])
            found_a.append(h1)
            found_b.append(h2)
            skipped.extend((c, key, size) for key, size in big)
        out["pairs"][method] = _distinct_pairs(np.concatenate(found_a), np.concatenate(found_b))
        out["skipped"][method] = skipped
        hashes = np.concatenate([r["counts"][method][0] for r in results])
        counts = np.concatenate([r["counts"][method][1] for r in results])
        distinct, inverse = np.unique(hashes, return_inverse=True)
        out["shared"][method] = distinct[np.bincount(inverse, weights=counts) > 1]
    return out


def _in_sorted(wanted: np.ndarray, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Which values of a uint64 column are in the sorted array ``wanted`` (nulls: no)."""
    hashes = column.fill_null(0).to_numpy().astype(np.uint64)
    position = np.minimum(np.searchsorted(wanted, hashes), len(wanted) - 1)
    return (wanted[position] == hashes) & np.asarray(pc.is_valid(column))


def select_members(table: pa.Table, spec: dict[str, Any]) -> dict[str, pa.Table]:
    """Per method, the ``ok`` rows whose hash is in ``spec["wanted"][method]`` (sorted), with the
    image's ``mean`` and ``std`` for the photometric check. For ``phash_crop``: the rows with a
    ``phash`` whose ``phash`` or a centre hash is wanted, with their centre hashes (``centre``)."""
    table = _ok(table)
    out = {}
    for method, wanted in spec["wanted"].items():
        if method not in table.column_names or len(wanted) == 0:
            continue
        if method == CROP_METHOD:
            centres = table.column(CROP_COLUMN).combine_chunks()
            flat_hit = _in_sorted(wanted, pc.list_flatten(centres))
            in_centre = np.zeros(table.num_rows, bool)
            parents = pc.list_parent_indices(centres).to_numpy()
            in_centre[parents[flat_hit]] = True
            hit = (_in_sorted(wanted, table.column("phash")) | in_centre) & np.asarray(pc.is_valid(table.column("phash")))
            key = "phash"
        else:
            hit, key = _in_sorted(wanted, table.column(method)), method
        rows = table.filter(pa.array(hit))
        orient = f"{method}_orient"
        out[method] = pa.table({"image_id": rows.column("image_id"), "h": rows.column(key).cast(pa.uint64()),
                                "hash_pixels": rows.column("hash_pixels"),
                                "orient": rows.column(orient).cast(pa.int8()) if orient in rows.column_names
                                else pa.nulls(rows.num_rows, pa.int8()),
                                **({"centre": rows.column(CROP_COLUMN)} if method == CROP_METHOD else {}),
                                **({"second": rows.column(SECOND_HASH[method]).cast(pa.uint64())}
                                   if SECOND_HASH.get(method) in rows.column_names else {}),
                                **({THUMBNAIL_COLUMN: rows.column(THUMBNAIL_COLUMN)}
                                   if THUMBNAIL_COLUMN in rows.column_names else {}),
                                **{name: rows.column(name).cast(pa.float64()) if name in rows.column_names
                                   else pa.nulls(rows.num_rows, pa.float64()) for name in PHOTOMETRIC}})
    return out


def select_colour_shares(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """From a ``channels`` part: ``(image_id, red_share, blue_share)`` of the images in
    ``spec["ids"]`` that have R, G and B bands (share = the band's mean over the sum of the three)."""
    table = table.filter(pc.is_in(table.column("image_id"), value_set=spec["ids"]))
    means = {}
    for band in ("R", "G", "B"):
        rows = table.filter(pc.fill_null(pc.equal(table.column("band"), band), False))
        means[band] = rows.select(["image_id", "mean"]).rename_columns(["image_id", band])
    joined = means["R"].join(means["G"], "image_id", join_type="inner").join(means["B"], "image_id", join_type="inner")
    red, green, blue = (joined.column(b).to_numpy(zero_copy_only=False).astype(np.float64) for b in ("R", "G", "B"))
    total = red + green + blue
    with np.errstate(invalid="ignore", divide="ignore"):
        red_share, blue_share = np.where(total > 0, red / total, 1 / 3), np.where(total > 0, blue / total, 1 / 3)
    return pa.table({"image_id": joined.column("image_id"), COLOUR_SHARES[0]: red_share, COLOUR_SHARES[1]: blue_share})


def _concat_tables(total: list[pa.Table], part: pa.Table | list[pa.Table]) -> list[pa.Table]:
    """Merge step of a pass whose parts give a table (or, merged, a list of them): all of them."""
    return [*total, *(part if isinstance(part, list) else [part])]


def _concat_members(total: dict[str, list[pa.Table]], part: dict[str, Any]) -> dict[str, list[pa.Table]]:
    for method, rows in part.items():
        total[method] = _concat_tables(total.get(method, []), rows)
    return total


def columns_for(methods: list[str]) -> list[str]:
    """The ``images`` columns the dedup reads: ids, status, ``hash_pixels``, each method's hash and,
    for a D4 hash, the transform it came from, and the photometric statistics."""
    extra = {SECOND_HASH[m] for m in methods if m in SECOND_HASH} | ({"phash"} if CROP_METHOD in methods else set())
    return ["image_id", "status", "hash_pixels", *methods, *sorted(extra - set(methods)),
            *(f"{m}_orient" for m in d4_methods(methods)), *PHOTOMETRIC, THUMBNAIL_COLUMN]


def shuffle_hashes(parts: Parts, config: DedupConfig, rows: int) -> list[dict[str, Any]]:
    """The map/reduce of the module docstring: one result per partition."""
    spec = {"partitions": config.partitions_for(rows), "methods": list(config.near_methods), "distance": config.near_distance,
            "bands": config.effective_bands, "max_bucket": int(config.max_bucket)}
    return parts.shuffle(map_hashes, reduce_hashes, spec, columns_for(config.near_methods))


def find_exact_groups(reduced: list[dict[str, Any]]) -> pa.Table:
    """Groups of images with identical ``hash_pixels``."""
    members = [r["exact"] for r in reduced if r["exact"] is not None and r["exact"].num_rows]
    if not members:
        return DUPLICATES_SCHEMA.empty_table()
    table = pa.concat_tables(members)
    sizes = table.group_by("hash_pixels").aggregate([("image_id", "count")])
    table = table.join(sizes, "hash_pixels")
    n = table.num_rows
    group_id = pc.binary_join_element_wise("exact-pixel-", pc.utf8_slice_codeunits(table.column("hash_pixels"), 0, 16), "")
    out = pa.table({"group_id": group_id, "image_id": table.column("image_id"), "kind": pa.array(["exact"] * n),
                    "method": pa.array(["pixel"] * n), "distance": pa.array(np.zeros(n)),
                    "group_size": table.column("image_id_count"), "model": pa.nulls(n, pa.string())})
    return out.cast(DUPLICATES_SCHEMA).sort_by([("group_id", "ascending"), ("image_id", "ascending")])


def find_near_pairs(reduced: list[dict[str, Any]], method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Distinct hash pairs ``(h1 < h2)`` within ``near_distance`` bits, and the skipped buckets."""
    found = [r["pairs"][method] for r in reduced if method in r["pairs"]]
    skipped = [{"method": method, "band_combination": c, "key": key, "distinct_hashes": n}
               for r in reduced for c, key, n in r["skipped"].get(method, [])]
    if skipped:
        log.warning("dedup %s: skipped %d buckets larger than max_bucket (largest %d)", method, len(skipped),
                    max(s["distinct_hashes"] for s in skipped))
    if not found:
        empty = np.zeros(0, np.uint64)
        return empty, empty, np.zeros(0, np.int64), skipped
    # one pair can come from several band combinations, in several partitions
    h1, h2, dist = _distinct_pairs(np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))
    return h1, h2, dist, sorted(skipped, key=lambda s: (s["band_combination"], s["key"]))


#: The ``images`` statistics the photometric check reads: the pixel values' ``mean`` and ``std``, and
#: how gray the image is (``score_grayscale`` = 1 - min(1, chroma / 0.05), a named quality issue).
PHOTOMETRIC = ("mean", "std", "score_grayscale")
#: The colour balance it reads from the ``channels`` table: each band's mean over the sum of the R, G
#: and B means (brightness scaling leaves these shares alone).
COLOUR_SHARES = ("red_share", "blue_share")
#: The second hash each method's links are checked with (a hash of another kind over the same
#: picture: two different periodic textures that one hash sees within a few bits are ~30 bits apart
#: in the other, while copies stay close in both; measured on benchmarks/bench_duplicates.py).
#: ``phash_crop`` links a full ``phash`` to a centre one and is checked on the full ``dhash``, with
#: its own bound (``dedup.verify_crop_hash_distance``: a 5% crop moves the full ``dhash`` further).
#: ``phash_d4`` links copies in different orientations, where a plain hash says nothing: it is checked
#: on the ``dhash`` of each image turned as ``phash_d4`` turned it (:data:`ood_ray.stats.d4.PHASH_D4_CHECK`).
#: ``dhash_d4`` (not a default method) is not checked.
SECOND_HASH = {"phash": "dhash", "dhash": "phash", "phash_crop": "dhash", "phash_d4": PHASH_D4_CHECK}
#: The two 32-bit halves of the member's second hash, exact in float64 (NaN: none), after the photometry.
SECOND_HASH_HALVES = ("second_high", "second_low")
#: Every member's evidence, in this column order: photometry, then its second hash.
PHOTOMETRY = (*PHOTOMETRIC, *COLOUR_SHARES, *SECOND_HASH_HALVES)
#: Added to both standard deviations before their ratio (flat images have a std near 0).
CONTRAST_FLOOR = 0.01
#: ``score_grayscale`` from which an image counts as gray (chroma <= 0.02): its colour says nothing,
#: so a grayscale copy of a colour picture is not told apart by colour.
GRAY_SCORE = 0.6


@dataclass(frozen=True)
class PhotometricCheck:
    """Whether two images whose hashes agree can be copies of each other: a copy keeps the overall
    brightness within ``max_mean_difference`` (pixel mean on ``[0, 1]``), the contrast within a
    factor ``max_contrast_ratio`` (``(std + 0.01)`` of one over the other's) and -- when both are
    colour pictures -- its colour balance: the red and blue shares of the channel means within
    ``max_colour_difference`` (``None``: not checked). Perceptual hashes are computed on the luma
    with its mean and scale normalised away, so a light and a dark checkerboard, or stripes of any
    two colour pairs, hash alike; this tells them apart. Brightness scaling, re-encoding, resizing,
    flips and watermarks keep all three (measured on the duplicate benchmark: colour shares move by
    at most 0.051, under +30% brightness where pixels clip). ``None``: no check.

    ``max_second_hash_distance``: the Hamming distance two images' second hashes
    (:data:`SECOND_HASH`: the other kind of perceptual hash) may differ by (``None``: not checked);
    a missing second hash agrees with anything.

    ``min_pixel_correlation``: the least Pearson correlation of the two images' 16 x 16 grayscale
    thumbnails (``images.gray16``; for a D4 method each turned as its hash turned it), ``r =
    sum((x - mean x)(y - mean y)) / (|x - mean x| |y - mean y|)`` over the 256 pixels (``None``: not
    checked; a missing or flat thumbnail agrees with anything). A 64-bit hash keeps the signs of a
    few coefficients only: for stripes, whose DCT has one non-zero row, most bits carry noise and
    two different striped textures can hash within a few bits, in both hash kinds. Their pixels do
    not correlate (measured on the duplicate benchmark's ``gray16``: ``r`` of -0.57 to 0.41 on such
    links, while copies linked by ``phash_d4`` keep ``r >= 0.63``; a watermark on a 32-px texture
    brings a few ``phash`` and ``dhash`` copies down to 0.33; a 5% crop moves a fine texture's
    pixels, so ``phash_crop`` links have their own bound)."""

    max_mean_difference: float = 0.25
    max_contrast_ratio: float = 2.0
    max_colour_difference: float | None = 0.06
    max_second_hash_distance: int | None = None
    min_pixel_correlation: float | None = None

    def agree(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise over ``(k, 7)`` evidence rows (columns :data:`PHOTOMETRY`); a missing value
        agrees with anything."""
        mean_a, std_a, gray_a, red_a, blue_a, high_a, low_a = a.T
        mean_b, std_b, gray_b, red_b, blue_b, high_b, low_b = b.T
        with np.errstate(invalid="ignore"):
            close = np.abs(mean_a - mean_b) <= self.max_mean_difference
            high, low = np.maximum(std_a, std_b) + CONTRAST_FLOOR, np.minimum(std_a, std_b) + CONTRAST_FLOOR
            similar = high <= self.max_contrast_ratio * low
            known = ~(np.isnan(mean_a) | np.isnan(mean_b) | np.isnan(std_a) | np.isnan(std_b))
            agree = ~known | (close & similar)
            if self.max_colour_difference is not None:
                colourful = (gray_a < GRAY_SCORE) & (gray_b < GRAY_SCORE)  # NaN compares False: unknown
                shifted = np.maximum(np.abs(red_a - red_b), np.abs(blue_a - blue_b)) > self.max_colour_difference
                agree &= ~(colourful & shifted)  # NaN shares compare False: unknown agrees
            if self.max_second_hash_distance is not None:
                both = ~(np.isnan(high_a) | np.isnan(high_b))
                halves = [np.nan_to_num(h).astype(np.uint64) for h in (high_a, low_a, high_b, low_b)]
                bits = np.bitwise_count(halves[0] ^ halves[2]) + np.bitwise_count(halves[1] ^ halves[3])
                agree &= ~both | (bits <= self.max_second_hash_distance)
        return agree

    def correlated(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise over ``(k, 256)`` normalised thumbnails (:func:`pixel_evidence`): their
        correlation is at least ``min_pixel_correlation`` (a NaN row agrees)."""
        if self.min_pixel_correlation is None:
            return np.ones(len(a), bool)
        return ~(np.einsum("ij,ij->i", a, b) < self.min_pixel_correlation)  # NaN compares False

    def correlated_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """:meth:`correlated` of every row of ``a`` with every row of ``b``, ``(len(a), len(b))``."""
        if self.min_pixel_correlation is None:
            return np.ones((len(a), len(b)), bool)
        with np.errstate(invalid="ignore"):
            return ~(a @ b.T < self.min_pixel_correlation)

    def agree_rows(self, photo: np.ndarray, pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether rows ``a[i]`` and ``b[i]`` agree: :meth:`agree` on their photometry and
        :meth:`correlated` on their thumbnails."""
        return self.agree(photo[a], photo[b]) & self.correlated(pixels[a], pixels[b])


def pixel_evidence(members: pa.Table) -> np.ndarray:
    """``(rows, 256)`` float32: each member's ``gray16`` thumbnail turned by its ``orient`` (the D4
    transform its hash came from, when it has one), minus its mean, over its norm -- the dot product
    of two rows is their correlation. NaN rows: no thumbnail, or a flat one."""
    out = np.full((members.num_rows, THUMBNAIL_VALUES), np.nan, np.float32)
    if THUMBNAIL_COLUMN not in members.column_names or members.num_rows == 0:
        return out
    column = members.column(THUMBNAIL_COLUMN).combine_chunks()
    present = np.asarray(pc.is_valid(column))
    if not present.any():
        return out
    kept = column.filter(pa.array(present))
    data = np.frombuffer(kept.buffers()[1], np.uint8)[kept.offset * THUMBNAIL_VALUES:][:len(kept) * THUMBNAIL_VALUES]
    thumbs = data.reshape(-1, THUMBNAIL_SIZE, THUMBNAIL_SIZE).astype(np.float32)
    if "orient" in members.column_names:
        orients = members.column("orient").to_numpy(zero_copy_only=False)[present]
        for index in range(8):
            turned = orients == index
            if turned.any():
                thumbs[turned] = transform(thumbs[turned], index)
    flat = thumbs.reshape(len(thumbs), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[present] = np.where(norm > 1e-6, flat / norm, np.nan)
    return out


def photometry(members: pa.Table) -> np.ndarray:
    """``(rows, 7)`` evidence of the member rows, :data:`PHOTOMETRY` (NaN where a value is missing)."""
    columns = [members.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
               if name in members.column_names else np.full(members.num_rows, np.nan) for name in (*PHOTOMETRIC, *COLOUR_SHARES)]
    if "second" in members.column_names:
        second = members.column("second")
        values = second.fill_null(0).to_numpy().astype(np.uint64)
        missing = ~np.asarray(pc.is_valid(second))
        for half in (values >> np.uint64(32), values & np.uint64(0xFFFFFFFF)):
            columns.append(np.where(missing, np.nan, half.astype(np.float64)))
    else:
        columns += [np.full(members.num_rows, np.nan)] * 2
    return np.column_stack(columns)


def _image_nodes(values_of_row: np.ndarray, photo: np.ndarray, pixels: np.ndarray, check: PhotometricCheck | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(node of each row, first row of each node)``: the rows holding one hash value, split into
    nodes whose members agree photometrically with the node's first row (rows in order)."""
    node = np.empty(len(values_of_row), np.int64)
    leaders: list[int] = []
    leaders_of_value: dict[int, list[int]] = {}
    for row, value in enumerate(values_of_row.tolist()):
        found = -1
        for candidate in leaders_of_value.get(value, ()):
            lead = leaders[candidate]
            if check is None or check.agree_rows(photo, pixels, np.array([row]), np.array([lead]))[0]:
                found = candidate
                break
        if found < 0:
            found = len(leaders)
            leaders.append(row)
            leaders_of_value.setdefault(value, []).append(found)
        node[row] = found
    return node, np.asarray(leaders, np.int64)


def _centre_matrix(members: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)``, ``(rows, S)``: each member's centre hashes, padded (``S``: the longest list)."""
    centres = members.column("centre").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(centres), 0).to_numpy()
    width = int(lengths.max()) if len(lengths) else 0
    values, valid = np.zeros((len(lengths), width), np.uint64), np.zeros((len(lengths), width), bool)
    flat = pc.list_flatten(centres)
    rows = pc.list_parent_indices(centres).to_numpy()
    slots = np.arange(len(rows)) - np.repeat(np.r_[0, np.cumsum(lengths)][:-1], lengths) if len(rows) else rows
    values[rows, slots] = flat.fill_null(0).to_numpy().astype(np.uint64)
    valid[rows, slots] = np.asarray(pc.is_valid(flat))
    return values, valid


#: The ``phash_crop`` groups are cut at twice the pair distance: two images ``B``, ``C`` that one crop
#: ``A`` comes from have centres within ``d`` of ``A``'s hash, so within ``2 d`` of each other (the
#: triangle inequality); a cut at ``d`` separates a crop from its original whenever the original's
#: other copies are in the group (measured on the duplicate benchmark: 22 of 300 crops).
CROP_DIAMETER_FACTOR = 2


def crop_distance_matrix(full: np.ndarray, centres: np.ndarray, valid: np.ndarray):
    """``distances(a, b=None)`` over row indices: the crop distance of two images, the smallest of
    the Hamming distances full-full, full of one to a centre hash of the other and back (what
    :func:`ood_ray.dedup.linkage.split_component` cuts on for ``phash_crop``)."""
    far = float(HASH_BITS + 1)

    def to_centres(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if centres.shape[1] == 0:
            return np.full((len(a), len(b)), far)
        d = np.bitwise_count(full[a][:, None, None] ^ centres[b][None, :, :]).astype(np.float64)
        return np.where(valid[b][None, :, :], d, far).min(axis=2)

    def distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        a = np.asarray(a, np.int64)
        b = a if b is None else np.asarray(b, np.int64)
        return np.minimum(hamming_matrix(full[a], full[b]), np.minimum(to_centres(a, b), to_centres(b, a).T))

    return distances


def crop_links(members: pa.Table, h1: np.ndarray, h2: np.ndarray, dist: np.ndarray, full_distance: int = -1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``phash_crop`` pairs among ``members`` as distinct pairs ``(f1 < f2)`` of their full
    ``phash`` values with the distance: the join's value pairs ``(x, y)`` within the distance, and
    the values held both as a full and as a centre hash (distance 0), are kept where ``x`` is an
    image's full hash and ``y`` a centre hash of another image (or the reverse) -- a centre never
    links to a centre, and two full hashes are ``phash``'s business: a pair whose full hashes are
    within ``full_distance`` bits is left out (``phash`` links it; here it would only pull the
    ordinary copies of an image into its crop groups, where the complete-linkage cut then separates
    a crop from its original)."""
    full = members.column("h").to_numpy().astype(np.uint64)
    centres, valid = _centre_matrix(members)
    as_full: dict[int, list[int]] = {}
    for row, value in enumerate(full.tolist()):
        as_full.setdefault(value, []).append(row)
    as_centre: dict[int, list[int]] = {}
    for row, value in zip(*(np.nonzero(valid)[0].tolist(), centres[valid].tolist())):
        as_centre.setdefault(value, []).append(row)
    candidates = [*zip(h1.tolist(), h2.tolist(), dist.tolist()), *((v, v, 0) for v in as_full.keys() & as_centre.keys())]
    best: dict[tuple[int, int], int] = {}
    for x, y, d in candidates:
        for f, c in ((x, y), (y, x)) if x != y else ((x, x),):
            for a in as_full.get(f, ()):
                for b in as_centre.get(c, ()):
                    fa, fb = int(full[a]), int(full[b])
                    if (fa ^ fb).bit_count() > full_distance:
                        key = (min(fa, fb), max(fa, fb))
                        best[key] = min(best.get(key, HASH_BITS), int(d))
    keys = sorted(best)
    return (np.asarray([k[0] for k in keys], np.uint64), np.asarray([k[1] for k in keys], np.uint64),
            np.asarray([best[k] for k in keys], np.int64))


#: The distance the cut sees between two disagreeing images: beyond any threshold, but finite
#: (SciPy's linkage takes finite distances only).
DISAGREE = 1e6


def agreeing_distances(distances, photo: np.ndarray, pixels: np.ndarray, check: PhotometricCheck):
    """``distances`` over node indices, made infinite between two nodes whose first images disagree
    photometrically: the complete-linkage cut then keeps only members that are all pairwise
    close *and* agreeing. Without it a group can hold two pictures that disagree (a purple and a
    blue texture) when each agrees with a third member that links them (a gray one)."""

    def agreeing(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        a = np.asarray(a, np.int64)
        b = a if b is None else np.asarray(b, np.int64)
        matrix = distances(a, None if b is a else b)
        rows, cols = np.repeat(a, len(b)), np.tile(b, len(a))
        agree = check.agree(photo[rows], photo[cols]).reshape(len(a), len(b)) & check.correlated_matrix(pixels[a], pixels[b])
        return np.where(agree, matrix, DISAGREE)

    return agreeing


def find_near_groups(members: pa.Table, method: str, h1: np.ndarray, h2: np.ndarray, dist: np.ndarray,
                     max_distance: int | None = None, exhaustive_max: int = 2000,
                     check: PhotometricCheck | None = None) -> tuple[pa.Table, pa.Table]:
    """Near-duplicate groups by one perceptual hash from its pairs and the images holding their
    hashes or a hash shared with another image (see module docstring), each connected component
    cut into groups of diameter at most ``max_distance`` (:mod:`ood_ray.dedup.linkage`; default: the
    largest pair distance, i.e. no cut), and the pairs inside the groups (``duplicate_pairs``).

    With a ``check``, images are linked only when they also agree photometrically: the images
    holding one hash value are split into nodes of mutually agreeing images (each checked against
    its node's first image, in ``image_id`` order), and a hash pair links two nodes only when
    their first images agree.

    Members with a ``centre`` column are ``phash_crop`` members: the pairs are
    :func:`crop_links`' (full values), the cut measures :func:`crop_distance_matrix` and the pairs
    between nodes are recorded with ``transform = 'centre_crop'``."""
    if members.num_rows == 0:
        return DUPLICATES_SCHEMA.empty_table(), DUPLICATE_PAIRS_SCHEMA.empty_table()
    members = members.sort_by("image_id")
    hashes = members.column("h").to_numpy().astype(np.uint64)
    values, value_of_row = np.unique(hashes, return_inverse=True)
    photo, pixels = photometry(members), pixel_evidence(members)
    node, leaders = _image_nodes(value_of_row, photo, pixels, check)
    # every node of one hash value with every node of the other, kept when their first images agree
    nodes_of_value: dict[int, list[int]] = {}
    for n, lead in enumerate(leaders.tolist()):
        nodes_of_value.setdefault(int(value_of_row[lead]), []).append(n)
    v1, v2 = np.searchsorted(values, h1), np.searchsorted(values, h2)
    e1, e2, ed = [], [], []
    for x, y, d in zip(v1.tolist(), v2.tolist(), dist.tolist()):
        for a in nodes_of_value.get(x, ()):
            for b in nodes_of_value.get(y, ()):
                e1.append(a)
                e2.append(b)
                ed.append(d)
    e1, e2, ed = np.asarray(e1, np.int64), np.asarray(e2, np.int64), np.asarray(ed, np.int64)
    if check is not None and len(e1):
        la, lb = leaders[e1], leaders[e2]
        keep = check.agree_rows(photo, pixels, la, lb)
        e1, e2, ed = e1[keep], e2[keep], ed[keep]
    node_values = values[value_of_row[leaders]]
    labels = compute_components(len(leaders), e1, e2)
    crop = "centre" in members.column_names
    if max_distance is not None:
        if crop:
            base = crop_distance_matrix(hashes[leaders], *(m[leaders] for m in _centre_matrix(members)))
        else:
            def base(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
                return hamming_matrix(node_values[a], None if b is None else node_values[b])
        distances = base if check is None else agreeing_distances(base, photo[leaders], pixels[leaders], check)
        labels = cut_components(labels, lambda group: split_component(distances, group, max_distance, exhaustive_max))
    inside = labels[e1] == labels[e2]
    e1, e2, ed = e1[inside], e2[inside], ed[inside]

    # Smallest distance from each node to another member: 0 when it holds two images.
    nearest = np.full(len(leaders), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(nearest, e1, ed)
    np.minimum.at(nearest, e2, ed)
    nearest[np.bincount(node, minlength=len(leaders)) > 1] = 0

    image_ids = np.asarray(members.column("image_id").to_pylist(), dtype=object)
    pixel_hashes = np.asarray(members.column("hash_pixels").to_pylist(), dtype=object)
    orients = members.column("orient").to_pylist() if "orient" in members.column_names else [None] * members.num_rows
    group_of_image = labels[node]
    rows: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    reported: set[int] = set()
    order = np.argsort(group_of_image, kind="stable")
    boundaries = np.flatnonzero(np.diff(group_of_image[order])) + 1
    for indices in np.split(order, boundaries):
        if len(indices) < 2 or len(set(pixel_hashes[indices])) < 2:
            continue
        reported.add(int(group_of_image[indices[0]]))
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
    groups = pa.Table.from_pydict(rows, schema=DUPLICATES_SCHEMA)
    return groups, _group_pairs(method, node, image_ids, orients, labels, reported, e1, e2, ed,
                                "centre_crop" if crop else None)


def _group_pairs(method: str, node: np.ndarray, image_ids: np.ndarray, orients: list,
                 labels: np.ndarray, reported: set[int], e1: np.ndarray, e2: np.ndarray, dist: np.ndarray,
                 link: str | None = None) -> pa.Table:
    """The evidence of each reported group as image pairs: for each node pair inside it, the first
    image of each node; for a node of several images, its first with each other (distance 0).
    ``transform``: for D4 hashes, what turns the first image into the second; else ``link`` on the
    pairs between nodes (``centre_crop``: one is a centred crop of the other)."""
    holders: dict[int, list[int]] = {}
    for row, value in enumerate(node.tolist()):
        holders.setdefault(value, []).append(row)
    a_rows, b_rows, distances = [], [], []
    for x, y, d in zip(e1.tolist(), e2.tolist(), dist.tolist()):
        if int(labels[x]) in reported:
            a_rows.append(holders[x][0])
            b_rows.append(holders[y][0])
            distances.append(float(d))
    between = len(a_rows)
    for value, rows_of_value in holders.items():
        if len(rows_of_value) > 1 and int(labels[value]) in reported:
            for other in rows_of_value[1:]:
                a_rows.append(rows_of_value[0])
                b_rows.append(other)
                distances.append(0.0)
    d4 = method in D4_METHODS
    transforms = [relation(int(orients[a]), int(orients[b])) if d4 and orients[a] is not None and orients[b] is not None
                  else (link if k < between else None) for k, (a, b) in enumerate(zip(a_rows, b_rows))]
    n = len(a_rows)
    return pa.table({"image_id": pa.array(image_ids[a_rows].tolist() if n else [], pa.string()),
                     "other_id": pa.array(image_ids[b_rows].tolist() if n else [], pa.string()),
                     "model": pa.nulls(n, pa.string()), "cosine_similarity": pa.nulls(n, pa.float32()),
                     "method": pa.array([method] * n, pa.string()), "distance": pa.array(distances, pa.float64()),
                     "transform": pa.array(transforms, pa.string())}, schema=DUPLICATE_PAIRS_SCHEMA)


def _with_colour_shares(found: dict[str, list[pa.Table]], channel_parts: Parts) -> dict[str, list[pa.Table]]:
    """The members of every method with their colour shares (:func:`select_colour_shares` over the
    ``channels`` parts, for the members only)."""
    ids = pa.array(sorted({i for tables in found.values() for t in tables for i in t.column("image_id").to_pylist()}),
                   pa.string())
    if len(ids) == 0:
        return found
    shares = channel_parts.merge(select_colour_shares, {"ids": ids}, ["image_id", "band", "mean"], _concat_tables, list)
    colours = pa.concat_tables(shares) if shares else None
    if colours is None or colours.num_rows == 0:
        return found
    return {method: [_with_columns_of(t, colours) for t in tables] for method, tables in found.items()}


def _with_columns_of(table: pa.Table, other: pa.Table) -> pa.Table:
    """``table`` with ``other``'s columns appended, matched on ``image_id`` (null where ``other``
    has no row): a left join by position, since Arrow's join takes no list columns (``centre``)."""
    position = pc.index_in(table.column("image_id"), value_set=other.column("image_id"))
    for name in other.column_names:
        if name != "image_id":
            table = table.append_column(name, other.column(name).take(position))
    return table


def run_dedup(parts: Parts, config: DedupConfig, rows: int = 0, embedding_groups: pa.Table | None = None,
              channel_parts: Parts | None = None) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """The ``duplicates`` table (exact, near per hash method, then embedding groups when given),
    the near pairs behind the hash groups (``duplicate_pairs`` rows) and a summary for
    ``run.json``; ``rows``: the number of images (sizes the shuffle); ``channel_parts``: the
    ``channels`` parts, for the colour term of the photometric check (left out without them)."""
    reduced = shuffle_hashes(parts, config, rows)
    tables = [find_exact_groups(reduced)]
    summary: dict[str, Any] = {
        "near_distance": config.near_distance, "bands": config.effective_bands,
        "max_bucket": config.max_bucket, "partitions": len(reduced), "skipped_buckets": [],
    }
    pairs, wanted, pair_tables = {}, {}, []
    for method in config.near_methods:
        h1, h2, dist, skipped = find_near_pairs(reduced, method)
        pairs[method] = (h1, h2, dist)
        summary["skipped_buckets"].extend(skipped)
        shared = [r["shared"][method] for r in reduced if method in r["shared"]]
        wanted[method] = _distinct(np.concatenate([h1, h2, *shared]))
    found = parts.merge(select_members, {"wanted": wanted}, columns_for(config.near_methods), _concat_members, dict)
    check = config.photometric_check()
    if check is not None and check.max_colour_difference is not None and channel_parts is not None:
        found = _with_colour_shares(found, channel_parts)
    for method in config.near_methods:
        members = found.get(method, [])
        members = pa.concat_tables(members) if members else pa.table({"image_id": pa.array([], pa.string()),
                                                                      "h": pa.array([], pa.uint64()),
                                                                      "hash_pixels": pa.array([], pa.string()),
                                                                      "orient": pa.array([], pa.int8())})
        method_pairs_of_values = (crop_links(members, *pairs[method], config.near_distance) if method == CROP_METHOD and members.num_rows
                                  else pairs[method])
        diameter = config.near_distance * (CROP_DIAMETER_FACTOR if method == CROP_METHOD else 1)
        groups, method_pairs = find_near_groups(members, method, *method_pairs_of_values, diameter, config.max_bucket,
                                                config.photometric_check(method))
        tables.append(groups)
        pair_tables.append(method_pairs)
    if embedding_groups is not None:
        tables.append(embedding_groups)
    duplicates = pa.concat_tables(tables)
    groups = {}
    for kind, method, group_id in zip(*(duplicates.column(c).to_pylist() for c in ("kind", "method", "group_id"))):
        groups.setdefault(f"{kind}/{method}", set()).add(group_id)
    summary["groups"] = {key: len(ids) for key, ids in sorted(groups.items())}
    summary["pairs"] = {method: table.num_rows for method, table in zip(config.near_methods, pair_tables)}
    log.info("dedup: %s", ", ".join(f"{k} {v} groups" for k, v in summary["groups"].items()) or "no duplicates")
    return duplicates, pa.concat_tables(pair_tables) if pair_tables else DUPLICATE_PAIRS_SCHEMA.empty_table(), summary
