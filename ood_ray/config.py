"""One frozen, validated configuration for an audit: YAML file + ``--set key=value`` overrides.

Every knob lives here, resources included. The config is built and validated on the driver
before Ray is imported or started: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the dotted key and the value, in well under a second.

Precedence (last wins): defaults < ``--config FILE.yaml`` < ``--set key=value`` < explicit CLI
flags (``SOURCE``, ``--out``, ``--overwrite``, ``--address``).
"""

from __future__ import annotations

import math

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and the value."""


LINT_METHODS: dict[str, float] = {"adaptive": 3.5, "zscore": 3.0, "modzscore": 3.5, "iqr": 1.5}
LAYOUTS = ("auto", "split/label", "label", "flat")
NEAR_METHODS = ("phash", "dhash", "phash_d4", "dhash_d4", "phash_crop")
#: The default near methods: dhash_d4 links many distinct periodic textures (measured by
#: benchmarks/bench_duplicates.py) for no recall that phash_d4 does not already give.
DEFAULT_NEAR_METHODS = ("phash", "dhash", "phash_d4", "phash_crop")
#: The centre scales of ``phash_crop`` (ood_ray.stats.centre).
DEFAULT_CROP_SCALES = (0.94, 0.88, 0.82)


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


def _check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, "must be > 0" if not allow_zero else "must be >= 0")


@dataclass(frozen=True)
class IOConfig:
    """Reading inputs. ``max_pixels`` is the decompression-bomb guard (checked from the header).

    ``max_decode_bytes``: the memory one image's decode and statistics may need, estimated from
    its header before any pixel is decoded (``too_large`` above it); ``null`` = half of a scan
    task's share of the worker node's memory (see ood_ray.io.memory). ``check_all_frames``: load
    every frame of animated and multi-page files, so that a broken later frame is ``truncated``.
    ``retry_*``: transient object-store errors (503 SlowDown, 5xx, reset or timed-out
    connections) are retried up to ``retry_attempts`` times with exponential backoff from
    ``retry_base_delay_s`` to ``retry_max_delay_s`` (jittered); a 404 or 403 is not retried.
    ``manifest_rows_per_task``: rows of a Parquet manifest read (and hashed) by one task.
    ``rows_per_block``: rows per scan task; ``null`` (default): sized so that a block is about
    ``block_seconds`` of work, from the objects' mean size (see ood_ray.io.block_size).
    ``part_target_mb``: the output tables' part files are coalesced into files of at least this
    many megabytes (the last one takes the rest; 0: keep the scan's parts), see ood_ray.run.compact.
    ``malloc_retain_mb``: freed memory a scan worker's allocator keeps for the next batch instead of
    returning it to the kernel (glibc, Linux; 0: glibc's defaults), see ood_ray.io.memory.tune_allocator.
    """

    max_pixels: int = 178_956_970
    max_file_bytes: int = 1 << 30
    max_decode_bytes: int | None = None
    check_all_frames: bool = True
    extensions: list[str] | None = None
    layout: str = "auto"
    fetch_threads: int = 8
    rows_per_block: int | None = None
    block_seconds: float = 0.5
    manifest_rows_per_task: int = 500_000
    part_target_mb: float = 128.0
    malloc_retain_mb: int = 128
    retry_attempts: int = 12
    retry_base_delay_s: float = 0.1
    retry_max_delay_s: float = 5.0

    @property
    def compacts(self) -> bool:
        """Whether stage ``compact`` rewrites the parts the write tasks leave (``part_target_mb`` > 0):
        then they are written with the faster codec (ood_ray.run.sink.PartSink)."""
        return self.part_target_mb > 0

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.max_pixels", self.max_pixels)
        _check_positive(f"{prefix}.max_file_bytes", self.max_file_bytes)
        _check_positive(f"{prefix}.max_decode_bytes", self.max_decode_bytes)
        _check_positive(f"{prefix}.retry_attempts", self.retry_attempts)
        _check_positive(f"{prefix}.retry_base_delay_s", self.retry_base_delay_s, allow_zero=True)
        _check_positive(f"{prefix}.retry_max_delay_s", self.retry_max_delay_s, allow_zero=True)
        _check_positive(f"{prefix}.fetch_threads", self.fetch_threads)
        _check_positive(f"{prefix}.malloc_retain_mb", self.malloc_retain_mb, allow_zero=True)
        _check_positive(f"{prefix}.rows_per_block", self.rows_per_block)
        _check_positive(f"{prefix}.block_seconds", self.block_seconds)
        _check_positive(f"{prefix}.manifest_rows_per_task", self.manifest_rows_per_task)
        _check_positive(f"{prefix}.part_target_mb", self.part_target_mb, allow_zero=True)
        if self.layout not in LAYOUTS:
            _fail(f"{prefix}.layout", self.layout, f"must be one of {', '.join(LAYOUTS)}")
        for ext in self.extensions or []:
            if not ext.startswith("."):
                _fail(f"{prefix}.extensions", self.extensions, f"each extension starts with '.', got {ext!r}")


@dataclass(frozen=True)
class StatsConfig:
    """Per-image statistics. ``per_channel_sharpness`` adds one edge-filter pass per channel
    (about +60% of the statistics time on RGB photos); off, the ``channels`` table has a null
    ``sharpness`` (the whole-image ``sharpness`` on ``images`` is always computed)."""

    per_channel_sharpness: bool = False

    def validate(self, prefix: str) -> None:
        return None


@dataclass(frozen=True)
class QualityConfig:
    """Named quality issues (``score_<issue>``, ``is_<issue>`` in ``images``; see
    :mod:`ood_ray.lint.issues` for each definition). ``thresholds``: ``{issue: threshold}`` on the
    0-1 score (an image is flagged when its score is above it); ``odd_size_iqr_factor``: the IQR
    multiple of the odd-size rule. Off, the columns are null and the ``quality`` stage is skipped."""

    enabled: bool = True
    thresholds: dict[str, float] = field(default_factory=dict)
    odd_size_iqr_factor: float = 3.0

    def validate(self, prefix: str) -> None:
        from ood_ray.lint.issues import ISSUE_NAMES

        for name, value in self.thresholds.items():
            if name not in ISSUE_NAMES:
                _fail(f"{prefix}.thresholds", name, f"unknown issue; one of {', '.join(ISSUE_NAMES)}")
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                _fail(f"{prefix}.thresholds.{name}", value, "must be a number in [0, 1)")
        _check_positive(f"{prefix}.odd_size_iqr_factor", self.odd_size_iqr_factor)

    def threshold(self, issue: str) -> float:
        """The flag threshold of ``issue`` (its default unless overridden)."""
        from ood_ray.lint.issues import ISSUES

        return float(self.thresholds.get(issue, ISSUES[issue].threshold))


@dataclass(frozen=True)
class LabelIssuesConfig:
    """Label issues of labelled rows (see :mod:`ood_ray.label_issues`).

    ``k``: the nearest reference neighbours whose labels vote (``knn.k`` when that is smaller);
    ``knn_threshold``: ``is_label_issue_knn_<model>`` when more than this share of the labelled
    neighbours carry another label. Confident learning runs for every classifier whose classes are
    the dataset's labels (``models[].class_names``, or inferred -- see the module); ``min_accuracy``:
    an inferred class mapping is used only when the model's top-1 accuracy on the reference rows
    under it is at least this. ``model``: the model behind ``is_label_issue`` (default: the first
    classifier over the labels, else the first model).
    """

    enabled: bool = True
    k: int = 10
    knn_threshold: float = 0.5
    min_accuracy: float = 0.3
    model: str | None = None

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.k", self.k)
        if not 0 <= self.knn_threshold < 1:
            _fail(f"{prefix}.knn_threshold", self.knn_threshold, "must be in [0, 1)")
        if not 0 <= self.min_accuracy <= 1:
            _fail(f"{prefix}.min_accuracy", self.min_accuracy, "must be in [0, 1]")


FINETUNE_METHODS = ("oe", "mixoe", "ce")
FINETUNE_LAYERS = ("all", "head")
#: How MixOE mixes an ID image with an outlier (ood_ray.finetune.losses; kept here so that checking a
#: configuration does not import torch).
MIX_OPS = ("mixup", "cutmix")


@dataclass(frozen=True)
class FinetuneConfig:
    """``ood-ray finetune`` (:mod:`ood_ray.finetune`): Outlier Exposure or MixOE fine-tuning of one
    classifier on Ray Train (``method``: ``oe``, ``mixoe``, or ``ce`` -- plain cross-entropy without
    outliers, the baseline; ``layers``: ``all`` or ``head`` -- only the last linear layer trained, the
    rest frozen in eval mode). Defaults from the MixOE paper's code (see
    :mod:`ood_ray.finetune.losses`): 10 epochs, batch 32, SGD (Nesterov momentum 0.9, weight decay
    1e-5) from ``learning_rate`` down a per-step cosine to ``min_learning_rate``; OE weight 0.5; MixOE
    with mixup, ``Beta(alpha, alpha)``, weight 5. ``validation_fraction``: ID rows held out (seeded)
    for the per-epoch accuracy; ``max_images``: at most this many decoded images per source (a
    seeded sample beyond; they are held in the object store); ``num_workers``/``use_gpu``: Ray Train's
    scaling; ``cpus_per_worker``: CPUs (and torch threads) of each worker (default: the cluster's
    CPUs split evenly between the workers, at most one node's -- a 1-CPU worker trains on one core)."""

    method: str = "mixoe"
    layers: str = "all"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.001
    min_learning_rate: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 1e-5
    oe_weight: float = 0.5
    mixoe_weight: float = 5.0
    mix_op: str = "mixup"
    alpha: float = 1.0
    augment: bool = True
    validation_fraction: float = 0.1
    max_images: int = 200_000
    num_workers: int = 1
    cpus_per_worker: int | None = None
    use_gpu: bool = False
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if self.method not in FINETUNE_METHODS:
            _fail(f"{prefix}.method", self.method, f"must be one of {', '.join(FINETUNE_METHODS)}")
        if self.layers not in FINETUNE_LAYERS:
            _fail(f"{prefix}.layers", self.layers, f"must be one of {', '.join(FINETUNE_LAYERS)}")
        if self.mix_op not in MIX_OPS:
            _fail(f"{prefix}.mix_op", self.mix_op, f"must be one of {', '.join(MIX_OPS)}")
        for key in ("epochs", "batch_size", "learning_rate", "alpha", "max_images", "num_workers", "cpus_per_worker"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("min_learning_rate", "momentum", "weight_decay", "oe_weight", "mixoe_weight"):
            _check_positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        if not 0 <= self.validation_fraction < 1:
            _fail(f"{prefix}.validation_fraction", self.validation_fraction, "must be in [0, 1)")


@dataclass(frozen=True)
class LintRule:
    """One metric's override: ``method`` and/or ``threshold`` (the method's multiplier) and/or
    ``side``: which tail is flagged (``both``, ``lower`` or ``upper``)."""

    method: str | None = None
    threshold: float | None = None
    side: str | None = None

    def validate(self, prefix: str) -> None:
        if self.method is not None and self.method not in LINT_METHODS:
            _fail(f"{prefix}.method", self.method, f"must be one of {', '.join(LINT_METHODS)}")
        _check_positive(f"{prefix}.threshold", self.threshold)
        if self.side is not None and self.side not in LINT_SIDES:
            _fail(f"{prefix}.side", self.side, f"must be one of {', '.join(LINT_SIDES)}")


#: The bounds that flag an image, by ``side``.
LINT_SIDE_BOUNDS: dict[str, tuple[str, ...]] = {"both": ("lower", "upper"), "lower": ("lower",), "upper": ("upper",)}
LINT_SIDES = tuple(LINT_SIDE_BOUNDS)
#: Metrics flagged on one side unless ``lint.overrides.<metric>.side`` says otherwise: a low
#: ``noise_ratio`` is a smooth picture -- blur is ``edge_contrast``'s to flag, and smooth textures
#: are ordinary -- only a high one (detail at the scale of one pixel) is noise.
DEFAULT_LINT_SIDES: dict[str, str] = {"noise_ratio": "upper"}


@dataclass(frozen=True)
class LintConfig:
    """Extreme-value flags over the scalar statistics of ``images``.

    ``method``: ``adaptive`` (the default: DataEval 1.1's tail-weighted double MAD, multiplier 3.5),
    ``zscore`` (|x - mean| / std > 3.0), ``modzscore`` (0.6745 |x - median| / MAD > 3.5) or ``iqr``
    (outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR]); ``threshold`` replaces the multiplier
    (see :mod:`ood_ray.lint.thresholds`).
    ``metrics``: which statistics (default: every scalar statistic but the five pixel
    percentiles and ``edge_p99``, whose exposure-free form ``edge_contrast`` is linted);
    ``log_metrics``: statistics thresholded on the log scale, ``ln(max(x, 2^-16))`` (default
    ``edge_p99``, ``edge_contrast``, ``noise_ratio``: blur divides them, and on the linear scale
    their lower bounds fall below 0; ``sharpness`` stays linear, as DataEval lints it: on the log
    scale it also flags sharp but mostly flat pictures, see :mod:`ood_ray.stats.visual`);
    ``per_class``: thresholds computed within each label; ``overrides``: ``{metric: {method,
    threshold, side}}`` (``side`` defaults to ``both``, for ``noise_ratio`` to ``upper``: see
    :data:`DEFAULT_LINT_SIDES`).
    """

    enabled: bool = True
    method: str = "adaptive"
    threshold: float | None = None
    metrics: list[str] | None = None
    log_metrics: list[str] = field(default_factory=lambda: ["edge_p99", "edge_contrast", "noise_ratio"])
    per_class: bool = False
    overrides: dict[str, LintRule] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        from ood_ray.stats.image import IMAGE_STAT_NAMES

        if self.method not in LINT_METHODS:
            _fail(f"{prefix}.method", self.method, f"must be one of {', '.join(LINT_METHODS)}")
        _check_positive(f"{prefix}.threshold", self.threshold)
        for name in list(self.metrics or []) + list(self.overrides) + list(self.log_metrics):
            if name not in IMAGE_STAT_NAMES:
                _fail(f"{prefix}.metrics", name, f"unknown statistic; one of {', '.join(IMAGE_STAT_NAMES)}")
        for name, rule in self.overrides.items():
            rule.validate(f"{prefix}.overrides.{name}")

    def rule_for(self, metric: str) -> tuple[str, float]:
        """The ``(method, multiplier)`` that applies to ``metric``."""
        rule = self.overrides.get(metric, LintRule())
        method = rule.method or self.method
        if rule.threshold is not None:
            return method, rule.threshold
        if rule.method is None and self.threshold is not None:
            return method, self.threshold
        return method, LINT_METHODS[method]

    def side_for(self, metric: str) -> str:
        """The tail(s) of ``metric``'s bounds that flag: ``both``, ``lower`` or ``upper``."""
        rule = self.overrides.get(metric, LintRule())
        return rule.side or DEFAULT_LINT_SIDES.get(metric, "both")


@dataclass(frozen=True)
class DedupConfig:
    """Duplicate groups: exact by ``hash_pixels``; near by perceptual hashes within a distance.

    Near pairs are found by multi-index hashing: the 64 bits are cut into ``bands`` bands
    (default ``near_distance + 2``); two hashes within ``near_distance`` bits agree exactly on at
    least ``bands - near_distance`` bands, so joining on every such combination of bands finds
    every pair without comparing all pairs. Buckets with more than ``max_bucket`` distinct hashes
    are skipped (and reported) so that a pathological dataset cannot explode the join.
    The join is a hash-partitioned shuffle in Ray tasks; ``partitions`` reduce tasks (``0``: one per
    4 million ``(band combination, hash)`` keys, at least 4). ``verify``: link two images only when
    their pixel means differ by at most ``verify_mean_difference`` and their standard deviations
    (+0.01) by at most a factor ``verify_contrast_ratio``, and, when both are colour pictures, the red
    and blue shares of their channel means by at most ``verify_colour_difference`` (``null``: no
    colour term; see ood_ray.dedup.hash_groups.PhotometricCheck), and their second hashes (``dhash``
    for a ``phash`` or ``phash_crop`` link, ``phash`` for a ``dhash`` link, ``phash_d4_dhash`` for a
    ``phash_d4`` link) by at most
    ``verify_hash_distance`` bits (``verify_crop_hash_distance`` for ``phash_crop``; ``null``: not
    checked), and the correlation of their 16 x 16 grayscale thumbnails (``images.gray16``) is at
    least ``verify_pixel_correlation`` (``verify_crop_pixel_correlation`` for ``phash_crop``; ``null``:
    not checked). ``crop_scales``: the centre
    scales whose ``phash`` the ``phash_crop`` method compares with other images' full ``phash``
    (see ood_ray.stats.centre).
    """

    enabled: bool = True
    near_distance: int = 4
    near_methods: list[str] = field(default_factory=lambda: list(DEFAULT_NEAR_METHODS))
    bands: int | None = None
    max_bucket: int = 2000
    partitions: int = 0
    verify: bool = True
    verify_mean_difference: float = 0.25
    verify_contrast_ratio: float = 2.0
    verify_colour_difference: float | None = 0.06
    verify_hash_distance: int | None = 20
    verify_crop_hash_distance: int | None = 20
    verify_pixel_correlation: float | None = 0.5
    verify_crop_pixel_correlation: float | None = None
    crop_scales: list[float] = field(default_factory=lambda: list(DEFAULT_CROP_SCALES))

    def validate(self, prefix: str) -> None:
        if not 0 <= self.near_distance <= 16:
            _fail(f"{prefix}.near_distance", self.near_distance, "must be between 0 and 16")
        for method in self.near_methods:
            if method not in NEAR_METHODS:
                _fail(f"{prefix}.near_methods", self.near_methods, f"each must be one of {', '.join(NEAR_METHODS)}")
        if self.bands is not None and not self.near_distance < self.bands <= 32:
            _fail(f"{prefix}.bands", self.bands, f"must be > near_distance ({self.near_distance}) and <= 32")
        _check_positive(f"{prefix}.max_bucket", self.max_bucket)
        if self.partitions < 0:
            _fail(f"{prefix}.partitions", self.partitions, "must be >= 0 (0: chosen from the number of rows)")
        if not 0 < self.verify_mean_difference <= 1:
            _fail(f"{prefix}.verify_mean_difference", self.verify_mean_difference, "must be in (0, 1]")
        if not self.verify_contrast_ratio >= 1:
            _fail(f"{prefix}.verify_contrast_ratio", self.verify_contrast_ratio, "must be >= 1")
        if self.verify_colour_difference is not None and not 0 < self.verify_colour_difference <= 1:
            _fail(f"{prefix}.verify_colour_difference", self.verify_colour_difference, "must be in (0, 1] or null")
        for key in ("verify_hash_distance", "verify_crop_hash_distance"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 64:  # an integer or null: checked when the config is read
                _fail(f"{prefix}.{key}", value, "must be an integer between 0 and 64 or null")
        for key in ("verify_pixel_correlation", "verify_crop_pixel_correlation"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and -1 <= value <= 1):
                _fail(f"{prefix}.{key}", value, "must be a correlation between -1 and 1 or null")
        if not isinstance(self.crop_scales, (list, tuple)) or not self.crop_scales or not all(
                isinstance(s, (int, float)) and 0.5 <= s < 1 for s in self.crop_scales):
            _fail(f"{prefix}.crop_scales", self.crop_scales, "must be a non-empty list of scales in [0.5, 1)")

    def photometric_check(self, method: str = "phash") -> Any:
        """The check ``method``'s near pairs must pass (``None`` when ``verify`` is off)."""
        from ood_ray.dedup.hash_groups import CROP_METHOD, PhotometricCheck

        crop = method == CROP_METHOD
        second = self.verify_crop_hash_distance if crop else self.verify_hash_distance
        pixels = self.verify_crop_pixel_correlation if crop else self.verify_pixel_correlation
        return (PhotometricCheck(self.verify_mean_difference, self.verify_contrast_ratio, self.verify_colour_difference, second,
                                 pixels) if self.verify else None)

    @property
    def effective_bands(self) -> int:
        return self.bands if self.bands is not None else self.near_distance + 2

    def partitions_for(self, rows: int) -> int:
        """Reduce tasks of the near-duplicate join for ``rows`` images (see class docstring)."""
        if self.partitions:
            return self.partitions
        combinations = math.comb(self.effective_bands, self.near_distance)
        return max(4, math.ceil(rows * combinations / 4_000_000))


@dataclass(frozen=True)
class RayConfig:
    """Ray resources. ``num_cpus``/``object_store_memory_mb`` apply only to a local Ray.

    ``op_resource_reservation``: Ray Data's per-operator reservation (it holds back half of the
    cluster for other operators). The scan is one map stage feeding a sink, and on a small
    machine the reservation halves its throughput (measured 7.2 s vs 3.2 s for 20,000 images on
    2 CPUs), so it is off by default.

    ``helper_resources``: the kNN shard actors are placed, softly, on
    a node that offers these custom resources (e.g. ``{head: 1}``); if that node is lost they are
    restarted anywhere. None by default. ``ledger``: record every scan part in the run's ledger
    so that ``--resume`` keeps it (off: a resumed run scans everything again).
    ``driver_pass_mb``: a global pass (lint, dedup, samples, the clusters table) over at most this
    many megabytes of part files runs in the driver process instead of Ray tasks (0: always tasks),
    see ood_ray.parts. ``local_max_rows``: a run of at most this many objects without models or
    autoencoder, and without a Ray address or a Ray already running in the process, runs without
    Ray -- the driver and a pool of local processes (0: always Ray), see ood_ray.run.local.
    ``warm_workers``: right after Ray starts, one short task per CPU imports the scan's modules and
    scans a tiny image, while the driver plans the run, so the scan's first tasks find warm worker
    processes (see ood_ray.run.ray_runtime.warm_workers).
    """

    num_cpus: int | None = None
    object_store_memory_mb: int | None = None
    task_num_cpus: float = 1.0
    driver_pass_mb: float = 64.0
    local_max_rows: int = 5000
    no_progress_timeout_s: float = 900.0
    progress_interval_s: float = 10.0
    op_resource_reservation: bool = False
    helper_resources: dict[str, float] = field(default_factory=dict)
    ledger: bool = True
    warm_workers: bool = True

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.num_cpus", self.num_cpus)
        _check_positive(f"{prefix}.object_store_memory_mb", self.object_store_memory_mb)
        _check_positive(f"{prefix}.driver_pass_mb", self.driver_pass_mb, allow_zero=True)
        _check_positive(f"{prefix}.local_max_rows", self.local_max_rows, allow_zero=True)
        _check_positive(f"{prefix}.task_num_cpus", self.task_num_cpus)
        _check_positive(f"{prefix}.no_progress_timeout_s", self.no_progress_timeout_s)
        _check_positive(f"{prefix}.progress_interval_s", self.progress_interval_s)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ModelConfig:
    """One model. ``name`` is a timm model name, or ``package.module:function`` (a value with a
    colon) whose function returns a ``torch.nn.Module`` with timm's interface.

    ``checkpoint``: local or ``s3://`` weights (``.safetensors``, or a torch file loaded with
    ``weights_only=True``; a ``module.`` prefix is stripped). ``pretrained``: timm's own weights
    (needs the hub). ``num_classes``: passed to timm (e.g. 10 for a CIFAR checkpoint).
    ``input_size``/``mean``/``std``/``interpolation``/``crop_pct`` override the model's
    ``pretrained_cfg``. ``alias`` names the model in tables and column names (default: the timm
    name, or the function name of an import path, with other characters than letters and digits
    replaced by ``_``). ``class_names``: the dataset label of each output, in order (for the
    confident-learning label-issue score; see :mod:`ood_ray.label_issues` for the inferred default).
    """

    name: str = ""
    alias: str | None = None
    pretrained: bool = False
    checkpoint: str | None = None
    num_classes: int | None = None
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    class_names: list[str] | None = None

    def validate(self, prefix: str) -> None:
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            _fail(f"{prefix}.class_names", self.class_names, "must not repeat a name")
        if not self.name:
            _fail(f"{prefix}.name", self.name, "a timm model name or package.module:function is required")
        if self.alias is not None and not self.alias.replace("_", "").isalnum():
            _fail(f"{prefix}.alias", self.alias, "letters, digits and underscores only")
        if self.input_size is not None and (len(self.input_size) not in (2, 3) or min(self.input_size) <= 0):
            _fail(f"{prefix}.input_size", self.input_size, "must be [H, W] or [3, H, W] with positive sizes")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                _fail(f"{prefix}.{key}", value, "must have 3 values (R, G, B)")
        if self.std is not None and min(self.std) <= 0:
            _fail(f"{prefix}.std", self.std, "must be > 0")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            _fail(f"{prefix}.interpolation", self.interpolation, f"must be one of {', '.join(INTERPOLATIONS)}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            _fail(f"{prefix}.crop_pct", self.crop_pct, "must be in (0, 1]")
        _check_positive(f"{prefix}.num_classes", self.num_classes, allow_zero=True)

    @property
    def column_alias(self) -> str:
        """The name used in tables and columns: ``alias``, else the name made identifier-safe."""
        if self.alias:
            return self.alias
        base = self.name.rsplit(":", 1)[1] if ":" in self.name else self.name
        return "".join(ch if ch.isalnum() else "_" for ch in base.lower()).strip("_")


@dataclass(frozen=True)
class EmbedConfig:
    """The embedding stage: an actor pool, each actor loading every model once.

    ``num_cpus_per_actor`` also sets torch's threads in the actor. On a 2-CPU machine keep
    ``num_actors * num_cpus_per_actor`` below the CPU count so the decode tasks keep a CPU.
    ``precision``: ``fp32`` (default), or ``fp16``/``bf16`` to run the models under
    ``torch.autocast`` (mixed precision: faster on GPUs with tensor cores; embeddings change in
    the last digits -- ``benchmarks/bench_gpu.py`` measures by how much). On CUDA the pixels are
    copied from page-locked memory with non-blocking transfers.
    ``actor_memory_mb``: the memory Ray reserves for each actor (weights, activations, a batch in
    flight; raise it for large models). Declaring it also keeps the decode tasks out of the actors:
    Ray Data fuses a task operator into the next actor operator only when their resource requests
    match, and the decode tasks request none.
    """

    batch_size: int = 64
    num_actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    actor_memory_mb: float = 1024.0
    precision: str = "fp32"
    top_k: int = 5
    max_full_probabilities: int = 1000

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.batch_size", self.batch_size)
        _check_positive(f"{prefix}.num_actors", self.num_actors)
        _check_positive(f"{prefix}.num_cpus_per_actor", self.num_cpus_per_actor)
        _check_positive(f"{prefix}.num_gpus_per_actor", self.num_gpus_per_actor, allow_zero=True)
        _check_positive(f"{prefix}.actor_memory_mb", self.actor_memory_mb)
        if self.precision not in ("fp32", "fp16", "bf16"):
            _fail(f"{prefix}.precision", self.precision, "must be one of fp32, fp16, bf16")
        _check_positive(f"{prefix}.top_k", self.top_k)
        _check_positive(f"{prefix}.max_full_probabilities", self.max_full_probabilities, allow_zero=True)


@dataclass(frozen=True)
class OODConfig:
    """Model-based OOD scores and their flags.

    Flags: ``score > quantile(reference scores, in_distribution_quantile)``, the reference being
    the rows of split ``reference_split`` (all rows when no row has that split).
    Fitted on labelled reference embeddings -- at most ``clf_max_per_class`` per class and
    ``clf_max_samples`` in all (a seeded, stratified sample) -- and thresholded on up to
    ``threshold_sample`` other reference rows: ``clf_entropy`` (the OoD Tool's logistic-regression
    probes with strengths ``clf_c``; ``headless``: for models without a classifier head, ``all``,
    or ``none``), ``mahalanobis``, ``rmd``, ``mahalanobis_pp`` and ``rmd_pp`` (every model).
    ``head_detectors``: the scores that use a classifier's last linear layer (ReAct, ASH-S, SCALE,
    fDBD, ViM, NNGuide; fitted on the same sample, labels not needed); ``nnguide_bank``: the rows of
    NNGuide's bank. ``fusion``: the detectors of one model (``fusion_model``, default: the first
    classifier) whose empirical CDFs on held-out reference rows are combined into ``score_fusion``
    (``fusion_method``: mean or max; ``[]``: no fusion; members a run lacks are left out while two
    remain); by default a local distance (kNN), a class-conditional distance (Mahalanobis++) and a
    feature-residual + logit score (ViM).
    ``driver_quantile_max_rows``: up to this many reference rows the score thresholds are computed
    by DuckDB on the driver (it holds the column); past it, exactly the same numbers from mergeable
    summaries in Ray tasks (:mod:`ood_ray.score_quantiles`), so the driver's memory stays flat.
    """

    reference_split: str = "train"
    in_distribution_quantile: float = 0.95
    clf_entropy: str = "headless"
    mahalanobis: bool = True
    rmd: bool = True
    mahalanobis_pp: bool = True
    rmd_pp: bool = True
    head_detectors: list[str] = field(default_factory=lambda: ["react", "ash", "scale", "fdbd", "vim", "nnguide"])
    nnguide_bank: int = 2000
    fusion: list[str] = field(default_factory=lambda: ["knn", "mahalanobis_pp", "vim"])
    fusion_method: str = "mean"
    fusion_model: str | None = None
    clf_c: list[float] = field(default_factory=lambda: [1e-5, 1.0, 1e5])
    clf_max_per_class: int = 1000
    clf_max_samples: int = 20000
    threshold_sample: int = 20000
    seed: int = 0
    driver_quantile_max_rows: int = 1_000_000

    def validate(self, prefix: str) -> None:
        if self.clf_entropy not in ("headless", "all", "none"):
            _fail(f"{prefix}.clf_entropy", self.clf_entropy, "must be headless, all or none")
        if not 0 < self.in_distribution_quantile < 1:
            _fail(f"{prefix}.in_distribution_quantile", self.in_distribution_quantile, "must be in (0, 1)")
        for c in self.clf_c:
            if c <= 0:
                _fail(f"{prefix}.clf_c", self.clf_c, "every regularisation strength must be > 0")
        _check_positive(f"{prefix}.clf_max_per_class", self.clf_max_per_class)
        _check_positive(f"{prefix}.clf_max_samples", self.clf_max_samples)
        _check_positive(f"{prefix}.threshold_sample", self.threshold_sample)
        _check_positive(f"{prefix}.nnguide_bank", self.nnguide_bank)
        from ood_ray.detectors import HEAD_DETECTORS, REGISTRY
        from ood_ray.detectors.fusion import FUSION_METHODS

        if self.fusion_method not in FUSION_METHODS:
            _fail(f"{prefix}.fusion_method", self.fusion_method, f"must be one of {', '.join(FUSION_METHODS)}")
        for name in self.fusion:
            if name not in REGISTRY or name == "fusion" or REGISTRY[name].input == "member_probabilities":
                _fail(f"{prefix}.fusion", self.fusion, "each must be a per-model detector name (e.g. knn, scale, gen, energy)")
        for name in self.head_detectors:
            if name not in HEAD_DETECTORS:
                _fail(f"{prefix}.head_detectors", self.head_detectors, f"each must be one of {', '.join(HEAD_DETECTORS)}")
        _check_positive(f"{prefix}.driver_quantile_max_rows", self.driver_quantile_max_rows, allow_zero=True)


INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq")


@dataclass(frozen=True)
class KNNConfig:
    """The sharded FAISS stage: KNN-OOD scores, neighbours, embedding near-duplicates.

    ``k``: the neighbour whose distance is ``score_knn`` (KNN-OOD uses 50 for CIFAR-size reference
    sets and 1000 for ImageNet-size). ``index``: ``auto`` (see ood_ray.index.planner), ``flat``
    (exact), ``ivf``, ``ivfpq``. ``shards``: actors holding the reference, ``num_cpus_per_shard``
    each; the query tasks mostly wait on the shards and take ``query_num_cpus``. The shards and one
    query task must fit the cluster's CPUs (checked before the shards start).
    ``neighbors_stored``: neighbours per image written to ``neighbors``.
    ``duplicate_similarity``: cosine similarity at or above which two images are near duplicates
    (``duplicate_neighbors`` candidates per image).
    """

    enabled: bool = True
    k: int = 50
    index: str = "auto"
    shards: int = 1
    num_cpus_per_shard: float = 0.5
    memory_budget_gb: float = 8.0
    exact_max_vectors: int = 1_000_000
    nlist: int | None = None
    nprobe: int = 16
    train_sample: int = 200_000
    neighbors_stored: int = 10
    duplicate_similarity: float = 0.98
    duplicate_neighbors: int = 5
    query_rows: int = 512
    query_num_cpus: float = 0.25

    def validate(self, prefix: str) -> None:
        for key in ("k", "shards", "num_cpus_per_shard", "memory_budget_gb", "exact_max_vectors", "nprobe",
                    "train_sample", "query_rows", "query_num_cpus"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        _check_positive(f"{prefix}.nlist", self.nlist)
        _check_positive(f"{prefix}.neighbors_stored", self.neighbors_stored, allow_zero=True)
        _check_positive(f"{prefix}.duplicate_neighbors", self.duplicate_neighbors, allow_zero=True)
        if self.index not in INDEX_KINDS:
            _fail(f"{prefix}.index", self.index, f"must be one of {', '.join(INDEX_KINDS)}")
        if not -1.0 <= self.duplicate_similarity <= 1.0:
            _fail(f"{prefix}.duplicate_similarity", self.duplicate_similarity, "must be a cosine similarity in [-1, 1]")


CLUSTER_METHODS = ("kmeans", "hdbscan")
PROJECTIONS = ("pca", "umap", "tsne")
CORRECTIONS = ("bonferroni", "fdr")


@dataclass(frozen=True)
class ClusterConfig:
    """Clusters of one model's normalised embeddings (``model``: an alias; default the first model).

    ``method``: ``kmeans`` (FAISS spherical k-means) or ``hdbscan`` (scikit-learn; the sample must
    fit in memory). Fitted on a seeded sample of ``sample_size`` images, then every image is
    assigned to its nearest centroid. ``k``: fixed, or (left out) the k in ``[k_min, k_max]`` with the
    best silhouette on ``silhouette_sample`` images. ``outlier_zscore``: ``is_cluster_outlier`` when
    the distance to the centroid is more than this many standard deviations above its cluster's mean.
    """

    enabled: bool = True
    model: str | None = None
    method: str = "kmeans"
    k: int | None = None
    k_min: int = 2
    k_max: int = 20
    sample_size: int = 20_000
    silhouette_sample: int = 4_000
    niter: int = 25
    outlier_zscore: float = 2.5
    hdbscan_min_cluster_size: int = 10
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if self.method not in CLUSTER_METHODS:
            _fail(f"{prefix}.method", self.method, f"must be one of {', '.join(CLUSTER_METHODS)}")
        for key in ("k_min", "k_max", "sample_size", "silhouette_sample", "niter", "outlier_zscore", "hdbscan_min_cluster_size"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        if self.k is not None and self.k < 2:
            _fail(f"{prefix}.k", self.k, "must be >= 2 (or left out to choose it by silhouette)")
        if self.k_min < 2:
            _fail(f"{prefix}.k_min", self.k_min, "must be >= 2")
        if self.k_max < self.k_min:
            _fail(f"{prefix}.k_max", self.k_max, f"must be >= k_min ({self.k_min})")


@dataclass(frozen=True)
class ProjectConfig:
    """2-D maps of the cluster model's normalised embeddings: ``x_<method>``, ``y_<method>``.

    PCA and UMAP are fitted on ``sample_size`` images and transform every image; t-SNE cannot
    transform, so only its ``tsne_sample`` images get coordinates (the rest are null).
    """

    methods: list[str] = field(default_factory=lambda: ["pca"])
    sample_size: int = 20_000
    tsne_sample: int = 5_000
    umap_neighbors: int = 15
    tsne_perplexity: float = 30.0
    seed: int = 0

    def validate(self, prefix: str) -> None:
        for method in self.methods:
            if method not in PROJECTIONS:
                _fail(f"{prefix}.methods", method, f"must be among {', '.join(PROJECTIONS)}")
        for key in ("sample_size", "tsne_sample", "umap_neighbors", "tsne_perplexity"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))


@dataclass(frozen=True)
class DriftConfig:
    """Drift of each non-reference split (or of this run against ``--reference``) from the reference.

    Statistics: two-sample Kolmogorov-Smirnov and Cramer-von Mises per statistic on up to
    ``sample_size`` rows per side, corrected for multiple testing (``bonferroni`` or ``fdr``:
    Benjamini-Hochberg) over the statistics' family; embeddings: MMD permutation test
    (``mmd_sample`` per side, ``mmd_permutations``); kNN distances: one-sided Mann-Whitney U; new
    classes: silhouette-best k on the reference versus reference + new (``new_class_sample`` each).
    """

    enabled: bool = True
    alpha: float = 0.05
    correction: str = "fdr"
    statistics: list[str] | None = None
    sample_size: int = 20_000
    mmd_sample: int = 1_000
    mmd_permutations: int = 500
    new_class_sample: int = 2_000
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if not 0.0 < self.alpha < 1.0:
            _fail(f"{prefix}.alpha", self.alpha, "must be in (0, 1)")
        if self.correction not in CORRECTIONS:
            _fail(f"{prefix}.correction", self.correction, f"must be one of {', '.join(CORRECTIONS)}")
        for key in ("sample_size", "mmd_sample", "mmd_permutations", "new_class_sample"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))


@dataclass(frozen=True)
class AutoencoderConfig:
    """``score_recon``: a small convolutional autoencoder trained on the reference images (Ray Train).

    Images are resized to ``image_size`` squared RGB; at most ``max_train_images`` reference images
    train it (``num_workers`` Ray Train workers, GPUs with ``use_gpu``), a held-out tenth of them
    (up to ``ood.threshold_sample``) sets the threshold. ``storage_path``: where Ray Train keeps its
    checkpoint (default: the run's staging folder; must be shared storage on a multi-node cluster).
    """

    enabled: bool = False
    image_size: int = 32
    latent_channels: int = 16
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2.0e-3
    num_workers: int = 1
    use_gpu: bool = False
    max_train_images: int = 50_000
    storage_path: str | None = None
    seed: int = 0

    def validate(self, prefix: str) -> None:
        for key in ("image_size", "latent_channels", "epochs", "batch_size", "learning_rate", "num_workers", "max_train_images"):
            _check_positive(f"{prefix}.{key}", getattr(self, key))
        if self.image_size % 4:
            _fail(f"{prefix}.image_size", self.image_size, "must be a multiple of 4 (two stride-2 stages)")


@dataclass(frozen=True)
class AuditConfig:
    """The whole audit. ``source`` and ``out`` are required (CLI or YAML).

    ``reference``: a committed run directory to score this data against -- its models, saved
    index, fitted probes and thresholds -- instead of fitting on this data (``--reference``).
    """

    source: str = ""
    out: str = ""
    overwrite: bool = False
    address: str | None = None
    io: IOConfig = field(default_factory=IOConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    lint: LintConfig = field(default_factory=LintConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    label_issues: LabelIssuesConfig = field(default_factory=LabelIssuesConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    models: list[ModelConfig] = field(default_factory=list)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ood: OODConfig = field(default_factory=OODConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    reference: str | None = None

    def validate(self) -> None:
        if not self.source:
            _fail("source", self.source, "an input folder, s3:// prefix or manifest file is required")
        if not self.out:
            _fail("out", self.out, "an output directory (local or s3://) is required")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        seen: dict[str, int] = {}
        for i, model in enumerate(self.models):
            model.validate(f"models[{i}]")
            if model.column_alias in seen:
                _fail(f"models[{i}].alias", model.column_alias,
                      f"models[{seen[model.column_alias]}] already has this name; give one an alias")
            seen[model.column_alias] = i
        if self.label_issues.model is not None and self.models and self.label_issues.model not in seen:
            _fail("label_issues.model", self.label_issues.model, f"must be one of the models' names {sorted(seen)}")
        if self.cluster.model is not None and self.models and self.cluster.model not in seen:
            _fail("cluster.model", self.cluster.model, f"must be one of the models' names {sorted(seen)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Building from plain dicts with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: invalid value")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(key, value, f"must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            _fail(key, value, "must be a list")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, value, "must be a mapping")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(key, value, "must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, value, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, value, "must be a string")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (valid keys here: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}={value!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"lint.method=iqr"`` -> ``("lint.method", "iqr")``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}={raw!r}: not a YAML value ({exc})") from None
    return key, value


def load_config(
    path: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    models: list[str] | tuple[str, ...] = (),
    **explicit: Any,
) -> AuditConfig:
    """Build the validated config from a YAML file, ``--set`` overrides and explicit values.

    ``models`` (``--model NAME``, repeatable) appends ``{name: NAME}`` entries to ``models``.
    """
    tree: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"--config={path!r}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config={path!r}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config={path!r}: the top level must be a mapping")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    for key, value in explicit.items():
        if value is not None:
            tree[key] = value
    if models:
        if not isinstance(tree.get("models", []), list):
            raise ConfigError(f"models={tree['models']!r}: must be a list")
        tree["models"] = list(tree.get("models", [])) + [{"name": name} for name in models]
    config = _build(AuditConfig, tree)
    config.validate()
    return config
