"""``ood-ray finetune``: read the data, train on Ray Train, write a model an audit loads.

Output in ``DIR`` (local or ``s3://``):

- ``model.safetensors``: the fine-tuned weights;
- ``model.yaml``: the ``models:`` entry that loads them (the base model's name and preprocessing,
  ``num_classes`` and ``class_names`` of the fine-tuned head), so that
  ``ood-ray audit DATA --out OUT --config DIR/model.yaml`` works as it is;
- ``finetune.json``: provenance -- the base checkpoint's SHA-256, the data counts (decoded and
  skipped by status, per source), the held-out classes, the settings, per-epoch metrics, seconds;
- ``checkpoints/epoch-NNNN.pt``: one per epoch (``--resume`` continues from the newest, after
  checking that the settings are the ones it was written under).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import Any

import numpy as np

from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage

log = logging.getLogger(__name__)

SETTINGS_FILE = "finetune_settings.json"


def _sha256(uri: str | None) -> str | None:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest() if uri else None


def _latest_checkpoint(checkpoints: str) -> str | None:
    from ood_ray.finetune.train import CHECKPOINT_PREFIX

    try:
        names = sorted(uri for uri, _ in storage.list_files(checkpoints) if uri.rsplit("/", 1)[-1].startswith(CHECKPOINT_PREFIX))
    except (FileNotFoundError, OSError):
        return None
    return names[-1] if names else None


def _validation_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 7]).permutation(n)
    held = int(round(n * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


def default_worker_cpus(num_workers: int) -> int:
    """CPUs per Ray Train worker when ``finetune.cpus_per_worker`` is not set: the cluster's CPUs
    split between the workers, at most one node's worth (a worker lives on one node), at least 1."""
    import ray

    per_node = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=1)
    total = ray.cluster_resources().get("CPU", 1)
    return max(1, int(min(per_node, total // num_workers)))


def model_entry(spec: Any, alias: str, checkpoint: str, class_names: list[str]) -> dict[str, Any]:
    """The ``models:`` entry of the fine-tuned model: the base entry with the new weights and head."""
    entry = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None and k not in ("pretrained", "alias")}
    entry.update(alias=alias, checkpoint=checkpoint, num_classes=len(class_names), class_names=list(class_names))
    return entry


def run_finetune(config: AuditConfig, outliers: str | None, split: str | None = None, holdout_classes: list[str] | None = None,
                 holdout_count: int | None = None, holdout_seed: int = 0, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``config.models[0]`` on ``config.source`` with outliers from ``outliers`` into
    ``config.out`` (module docstring); returns ``finetune.json``'s content."""
    import ray
    import torch
    from safetensors.torch import save as save_safetensors

    from ood_ray.embed.models import inspect_models
    from ood_ray.finetune.data import load_images
    from ood_ray.finetune.train import run_trainer
    from ood_ray.holdout import choose_classes
    from ood_ray.run.ray_runtime import init_ray

    if len(config.models) != 1:
        raise ConfigError(f"models: finetune takes exactly one model, got {len(config.models)}")
    cfg = config.finetune
    if cfg.method == "ce" and outliers:
        raise ConfigError(f"--outliers={outliers!r}: finetune.method='ce' trains without outliers")
    if cfg.method != "ce" and not outliers:
        raise ConfigError(f"--outliers: finetune.method={cfg.method!r} needs auxiliary outlier images")
    out = storage.normalize_uri(config.out)
    checkpoints = storage.join(out, "checkpoints")
    started = time.perf_counter()
    info = inspect_models(config.models)[0]
    init_ray(config)
    exclude: list[str] = []
    if holdout_classes or holdout_count:
        from ood_ray.io.sources import build_manifest
        from ood_ray.tables import RESERVED_COLUMNS

        manifest = build_manifest(config, RESERVED_COLUMNS)
        exclude = choose_classes(manifest.column("label").to_pylist(), holdout_classes, holdout_count, holdout_seed)
        log.info("finetune: classes %s held out (seed %d)", exclude, holdout_seed)
    id_set = load_images(config.source, config, info.data_config, split=split, exclude_labels=exclude, need_labels=True)
    outlier_set = load_images(outliers, config, info.data_config) if outliers else None
    if len(id_set) == 0:
        raise ConfigError(f"source={config.source!r}: no labelled image decoded to fine-tune on")
    if outlier_set is not None and len(outlier_set) == 0:
        raise ConfigError(f"--outliers={outliers!r}: no image decoded")
    class_names = sorted(set(id_set.labels))
    labels = np.asarray([class_names.index(label) for label in id_set.labels], dtype=np.int64)
    train_rows, validation_rows = _validation_rows(len(labels), cfg.validation_fraction, cfg.seed)
    settings = {"source": config.source, "outliers": outliers, "split": split, "held_out": exclude,
                "model": dataclasses.asdict(config.models[0]), "finetune": dataclasses.asdict(cfg),
                "class_names": class_names, "images": len(id_set),
                "outlier_images": len(outlier_set) if outlier_set is not None else 0}
    settings_uri = storage.join(out, SETTINGS_FILE)
    resume_from = None
    if resume:
        if not storage.exists(settings_uri):
            raise ConfigError(f"--resume: {out} holds no interrupted fine-tune ({SETTINGS_FILE} missing)")
        before = json.loads(storage.read_bytes(settings_uri))
        if before != json.loads(json.dumps(settings)):
            differs = sorted(k for k in set(before) | set(settings) if before.get(k) != json.loads(json.dumps(settings)).get(k))
            raise ConfigError(f"--resume: the fine-tune in {out} was started with other settings ({', '.join(differs)})")
        resume_from = _latest_checkpoint(checkpoints)
        log.info("finetune: resuming from %s", resume_from or "the start (no checkpoint yet)")
    else:
        storage.write_bytes_atomic(settings_uri, json.dumps(settings, indent=2).encode())
    loop = {"spec": config.models[0], "import_root": info.import_root, "num_classes": len(class_names), "seed": cfg.seed,
            "mean": info.data_config["mean"], "std": info.data_config["std"],
            "id_pixels": ray.put(id_set.pixels), "id_labels": labels.tolist(),
            "outlier_pixels": ray.put(outlier_set.pixels) if outlier_set is not None else None,
            "train_rows": train_rows.tolist(), "validation_rows": validation_rows.tolist(),
            "method": cfg.method, "layers": cfg.layers, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate,
            "min_learning_rate": cfg.min_learning_rate, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
            "oe_weight": cfg.oe_weight, "mixoe_weight": cfg.mixoe_weight, "mix_op": cfg.mix_op, "alpha": cfg.alpha,
            "augment": cfg.augment, "checkpoints": checkpoints, "resume_from": resume_from,
            "threads": cfg.cpus_per_worker or default_worker_cpus(cfg.num_workers)}
    train_started = time.perf_counter()
    run_trainer(loop, cfg.num_workers, cfg.use_gpu, storage.join(out, "_train"))
    train_seconds = time.perf_counter() - train_started
    final = torch.load(io.BytesIO(storage.read_bytes(_latest_checkpoint(checkpoints))), map_location="cpu", weights_only=False)
    weights_uri = storage.join(out, "model.safetensors")
    storage.write_bytes_atomic(weights_uri, save_safetensors({k: v.contiguous() for k, v in final["model"].items()}))
    alias = f"{info.alias}_{cfg.method}"
    entry = model_entry(config.models[0], alias, weights_uri, class_names)
    import yaml

    storage.write_bytes_atomic(storage.join(out, "model.yaml"), yaml.safe_dump({"models": [entry]}, sort_keys=False).encode())
    record = {
        "model": entry, "base": {"name": config.models[0].name, "checkpoint": config.models[0].checkpoint,
                                 "sha256": _sha256(config.models[0].checkpoint), "num_classes": info.num_classes},
        "method": cfg.method, "settings": dataclasses.asdict(cfg), "class_names": class_names, "held_out": exclude,
        "data": {"source": config.source, "split": split, "counts": id_set.counts, "train": len(train_rows),
                 "validation": len(validation_rows), "outliers": outliers,
                 "outlier_counts": outlier_set.counts if outlier_set is not None else {}},
        "epochs": final["history"], "resumed_from": resume_from,
        "seconds": {"total": time.perf_counter() - started, "train": train_seconds,
                    "per_epoch": float(np.mean([e["seconds"] for e in final["history"]]))},
    }
    storage.write_bytes_atomic(storage.join(out, "finetune.json"), json.dumps(record, indent=2, default=str).encode())
    log.info("finetune: %s of %s done in %.0f s; weights %s", cfg.method, info.alias, record["seconds"]["total"], weights_uri)
    return record
