"""The one registry of output tables: every table's name, schema and the stage that writes it.

``images`` columns after the carried manifest columns (``image_id``, ``uri``, ``split``,
``label`` and any extras):

- object: ``file_size`` (bytes), ``hash_file``, ``status``, ``error``
- decode: ``format``, ``mode`` (as stored), ``frames``
- geometry and statistics: :data:`ood_ray.stats.image.IMAGE_STAT_NAMES`
- hashes: ``hash_pixels``, ``phash``, ``dhash``, ``phash_d4``, ``dhash_d4`` (with the D4 transform each came from), ``phash_crop`` (centre hashes)
- named quality issues: ``score_<issue>`` and ``is_<issue>`` (:mod:`ood_ray.lint.issues`); the scan
  writes the absolute ones, the ``quality`` stage adds ``score_odd_size`` / ``is_odd_size``

A failing row keeps ``image_id``, ``uri``, ``split``, ``label``, ``status``, ``error`` (and
``file_size``/``hash_file``/``format``/``mode``/``width``/``height`` when they were known before
the failure); its statistics are null.
"""

from __future__ import annotations

import pyarrow as pa

from ood_ray.columns import CHANNEL_LIST_PREFIX, INPUT_ERROR
from ood_ray.lint.issues import ABSOLUTE_ISSUES, ISSUES
from ood_ray.metrics import METRIC_NAMES
from ood_ray.stats.hashes import THUMBNAIL_VALUES
from ood_ray.stats.image import CHANNEL_STAT_NAMES, IMAGE_STAT_NAMES

_INT_STATS = {"width", "height", "size", "channels", "depth"}

OBJECT_FIELDS: list[pa.Field] = [
    pa.field("file_size", pa.int64()),
    pa.field("hash_file", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("format", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("frames", pa.int32()),
]
STAT_FIELDS: list[pa.Field] = [
    pa.field(name, pa.int64() if name in _INT_STATS else pa.float64()) for name in IMAGE_STAT_NAMES
]
HASH_FIELDS: list[pa.Field] = [
    pa.field("hash_pixels", pa.string()),
    pa.field("phash", pa.uint64()),
    pa.field("dhash", pa.uint64()),
    pa.field("phash_d4", pa.uint64()),
    pa.field("phash_d4_orient", pa.int8()),
    pa.field("dhash_d4", pa.uint64()),
    pa.field("dhash_d4_orient", pa.int8()),
    pa.field("phash_d4_dhash", pa.uint64()),
    pa.field("gray16", pa.binary(THUMBNAIL_VALUES)),
    pa.field("phash_crop", pa.list_(pa.uint64())),
]
#: The absolute named quality issues: ``score_<issue>`` (float64) and ``is_<issue>`` (bool) each.
QUALITY_FIELDS: list[pa.Field] = [field for name in ABSOLUTE_ISSUES for field in (
    pa.field(ISSUES[name].score_column, pa.float64()), pa.field(ISSUES[name].flag_column, pa.bool_()))]
#: Columns the scan adds to every manifest row (in this order).
SCAN_FIELDS: list[pa.Field] = OBJECT_FIELDS + STAT_FIELDS + HASH_FIELDS + QUALITY_FIELDS

#: Per-channel lists carried from the scan to the channels writer (dropped from ``images``).
CHANNEL_LIST_FIELDS: list[pa.Field] = [pa.field(f"{CHANNEL_LIST_PREFIX}band", pa.list_(pa.string()))] + [
    pa.field(f"{CHANNEL_LIST_PREFIX}{name}", pa.list_(pa.float64())) for name in CHANNEL_STAT_NAMES
]

CHANNELS_SCHEMA = pa.schema(
    [pa.field("image_id", pa.string()), pa.field("channel", pa.int32()), pa.field("band", pa.string())]
    + [pa.field(name, pa.float64()) for name in CHANNEL_STAT_NAMES]
)

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("method", pa.string()),
        pa.field("distance", pa.float64()),
        pa.field("group_size", pa.int64()),
        pa.field("model", pa.string()),
    ]
)

DUPLICATE_PAIRS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("other_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("cosine_similarity", pa.float32()),
        pa.field("method", pa.string()),
        pa.field("distance", pa.float64()),
        pa.field("transform", pa.string()),
    ]
)

LINT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("lower", pa.float64()),
        pa.field("upper", pa.float64()),
        pa.field("method", pa.string()),
        pa.field("threshold", pa.float64()),
        pa.field("scope", pa.string()),
        pa.field("severity", pa.float64()),
    ]
)

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("top_classes", pa.list_(pa.int32())),
        pa.field("top_probabilities", pa.list_(pa.float32())),
        pa.field("probabilities", pa.list_(pa.float32())),
        pa.field("logits", pa.list_(pa.float32())),
    ]
)

EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("dim", pa.int32()),
        pa.field("embedding", pa.list_(pa.float32())),
    ]
)

#: Table ``drift``: one row per test (see ood_ray.drift.drift_pass).
DRIFT_SCHEMA = pa.schema([
    pa.field("split", pa.string()), pa.field("test", pa.string()), pa.field("feature", pa.string()),
    pa.field("model", pa.string()), pa.field("statistic", pa.float64()), pa.field("p_value", pa.float64()),
    pa.field("threshold", pa.float64()), pa.field("drifted", pa.bool_()), pa.field("n_reference", pa.int64()),
    pa.field("n_new", pa.int64()), pa.field("detail", pa.string()),
])

NEIGHBORS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()), pa.field("model", pa.string()), pa.field("rank", pa.int32()),
    pa.field("neighbor_id", pa.string()), pa.field("distance", pa.float32()), pa.field("cosine_similarity", pa.float32()),
])

#: Table ``evaluation`` (``ood-ray evaluate``): one row per score and OOD set.
EVALUATION_SCHEMA = pa.schema(
    [pa.field("score", pa.string()), pa.field("ood_set", pa.string()), pa.field("n_id", pa.int64()),
     pa.field("n_ood", pa.int64())] + [pa.field(name, pa.float64()) for name in METRIC_NAMES]
)

#: Every table: ``{name: (schema or None when its columns depend on the run, writer)}``.
TABLES: dict[str, tuple[pa.Schema | None, str]] = {
    "images": (None, "scan, knn, finalize"),
    "channels": (CHANNELS_SCHEMA, "scan"),
    "predictions": (PREDICTIONS_SCHEMA, "scan (embed)"),
    "embeddings": (EMBEDDINGS_SCHEMA, "finalize"),
    "neighbors": (NEIGHBORS_SCHEMA, "knn"),
    "duplicate_pairs": (DUPLICATE_PAIRS_SCHEMA, "dedup"),
    "duplicates": (DUPLICATES_SCHEMA, "dedup"),
    "lint": (LINT_SCHEMA, "lint"),
    "clusters": (None, "clusters"),
    "drift": (DRIFT_SCHEMA, "drift"),
    "evaluation": (EVALUATION_SCHEMA, "ood-ray evaluate"),
}
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)

#: Names the scan writes; a manifest column with one of these names is refused.
RESERVED_COLUMNS: set[str] = {f.name for f in SCAN_FIELDS} | {"image_id", "listed_size", INPUT_ERROR}


def scan_schema(manifest_schema: pa.Schema, input_columns: list[str] = ()) -> pa.Schema:
    """Schema of one scan output block: manifest columns, scan columns, channel lists, and the
    resized-pixel columns (one ``_px_<key>`` per distinct model preprocessing, ``_ae_pixels``)."""
    pixels = [pa.field(name, pa.binary()) for name in input_columns]
    return pa.schema(list(manifest_schema) + SCAN_FIELDS + CHANNEL_LIST_FIELDS + pixels)
