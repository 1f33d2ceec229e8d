"""The fine-tuning loop on Ray Train (``TorchTrainer``; CPU workers here, GPUs on a cluster).

The decoded images (uint8, the model's input size) travel to the workers through the object store.
Each worker trains on its share of the ID rows (``rank::world``) with one batch of auxiliary
outliers per ID batch, and gradients are averaged by DDP when there are several workers. Every
random choice of an epoch -- the order, the outliers drawn, the augmentation, the mixing
coefficient -- comes from a generator seeded with ``(seed, epoch, rank)``, and each epoch ends with
a checkpoint (model, optimizer and schedule state) written by worker 0 to ``checkpoints/`` of the
output (local or ``s3://``): a run resumed from epoch ``e``'s checkpoint continues exactly as the
uninterrupted run would have (same final weights).

Augmentation (the MixOE fine-tuning's, at the model's input size): a random crop of the image
padded by 1/8 of its side (reflected), a horizontal flip (p = 0.5), a brightness shift of up to
+-32/255 and a saturation factor in [0.5, 1.5]. The ID and the (mixed or outlier) images go through
the model in one batch, as OE's reference code does, which keeps DDP to one forward per step.

``method: ce`` trains with the cross-entropy alone (no outliers): the baseline the other two are
compared with. ``layers: head`` trains only the last linear layer (``get_classifier()``); the body
is frozen and stays in eval mode, so its batch-norm statistics do not move either.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "epoch-"


def checkpoint_name(epoch: int) -> str:
    """The checkpoint written after ``epoch`` (0-based) finished."""
    return f"{CHECKPOINT_PREFIX}{epoch + 1:04d}.pt"


def cosine_factor(step: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """The learning-rate multiplier of MixOE's schedule: from 1 down to ``lr_min / lr_max`` along a
    half cosine over ``total_steps``."""
    return (lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))) / lr_max


def augment(batch: Any, rng: np.random.Generator) -> Any:
    """The augmentation of the module docstring on ``(N, 3, H, W)`` floats in [0, 1]."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = batch.shape
    pad = max(1, min(height, width) // 8)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    tops, lefts = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    out = torch.stack([padded[i, :, tops[i]:tops[i] + height, lefts[i]:lefts[i] + width] for i in range(n)])
    flips = torch.from_numpy(rng.random(n) < 0.5)
    out[flips] = out[flips].flip(-1)
    brightness = torch.from_numpy(rng.uniform(-32 / 255, 32 / 255, n).astype(np.float32)).view(n, 1, 1, 1)
    saturation = torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)).view(n, 1, 1, 1)
    gray = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
    out = gray + saturation * (out - gray) + brightness
    return out.clamp_(0.0, 1.0)


def _as_input(pixels: np.ndarray, mean: tuple, std: tuple, rng: np.random.Generator | None, device: Any) -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if rng is not None:
        x = augment(x, rng)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(device)


def build_classifier(cfg: dict[str, Any]) -> Any:
    """The base model with a head of ``num_classes`` outputs (a new, seeded head when it differs)."""
    import torch

    from ood_ray.embed.models import build_model

    model = build_model(cfg["spec"], cfg.get("import_root"))
    if getattr(model, "num_classes", None) != cfg["num_classes"]:
        if not callable(getattr(model, "reset_classifier", None)):
            raise ValueError(f"model {cfg['spec'].name!r} has {model.num_classes} outputs and no reset_classifier()")
        torch.manual_seed(cfg["seed"])
        model.reset_classifier(cfg["num_classes"])
    return model


def _accuracy(model: Any, pixels: np.ndarray, labels: np.ndarray, cfg: dict[str, Any], device: Any) -> float | None:
    import torch

    if len(labels) == 0:
        return None
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 256):
            x = _as_input(pixels[start:start + 256], cfg["mean"], cfg["std"], None, device)
            correct += int((model(x).argmax(dim=1).cpu().numpy() == labels[start:start + 256]).sum())
    return correct / len(labels)


def _batch_loss(model: Any, x: Any, y: Any, outliers: np.ndarray, cfg: dict[str, Any], rng: np.random.Generator,
                device: Any) -> Any:
    """The method's loss on one ID batch (one outlier drawn per ID image for OE and MixOE)."""
    import torch
    import torch.nn.functional as F

    from ood_ray.finetune.losses import mix, mixoe_loss, oe_loss

    if cfg["method"] == "ce":
        return F.cross_entropy(model(x), y)
    n = len(y)
    drawn = rng.integers(0, len(outliers), n)
    xo = _as_input(outliers[drawn], cfg["mean"], cfg["std"], rng if cfg["augment"] else None, device)
    if cfg["method"] == "oe":
        logits = model(torch.cat([x, xo]))
        return oe_loss(logits[:n], y, logits[n:], cfg["oe_weight"])
    mixed, lam = mix(x, xo, cfg["mix_op"], cfg["alpha"], rng)
    logits = model(torch.cat([x, mixed]))
    return mixoe_loss(logits[:n], y, logits[n:], lam, cfg["mixoe_weight"])


def train_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker (see module docstring)."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from ood_ray.io import storage
    from ood_ray.run.context import pause_point

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    model = build_classifier(cfg)
    head_only = cfg["layers"] == "head"
    if head_only:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    state = None
    if cfg.get("resume_from"):
        state = torch.load(io.BytesIO(storage.read_bytes(cfg["resume_from"])), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    device = get_device()
    model = prepare_model(model)
    pixels, labels = ray.get(cfg["id_pixels"]), np.asarray(cfg["id_labels"], dtype=np.int64)
    outliers = ray.get(cfg["outlier_pixels"]) if cfg["outlier_pixels"] is not None else None
    train_rows, validation_rows = np.asarray(cfg["train_rows"]), np.asarray(cfg["validation_rows"])
    shard = train_rows[rank::world]
    batch = cfg["batch_size"]
    steps = max(len(shard) // batch, 1)
    optimizer = torch.optim.SGD(trained, lr=cfg["learning_rate"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"], nesterov=cfg["momentum"] > 0)
    total = steps * cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total, cfg["learning_rate"], cfg["min_learning_rate"]))
    start_epoch, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    for epoch in range(start_epoch, cfg["epochs"]):
        rng = np.random.default_rng([cfg["seed"], epoch, rank])
        order = rng.permutation(shard)
        epoch_started = time.perf_counter()
        model.eval() if head_only else model.train()  # a frozen body keeps its batch-norm statistics
        total_loss, seen = 0.0, 0
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            if len(rows) == 0:
                break
            x = _as_input(pixels[rows], cfg["mean"], cfg["std"], rng if cfg["augment"] else None, device)
            y = torch.from_numpy(labels[rows]).to(device)
            loss = _batch_loss(model, x, y, outliers, cfg, rng, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(rows)
            seen += len(rows)
        metrics = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "learning_rate": scheduler.get_last_lr()[0]}
        if rank == 0:
            module = model.module if hasattr(model, "module") else model
            metrics["validation_accuracy"] = _accuracy(module, pixels[validation_rows], labels[validation_rows], cfg, device)
            metrics["seconds"] = time.perf_counter() - epoch_started
            history.append(metrics)
            buffer = io.BytesIO()
            torch.save({"model": {k: v.cpu() for k, v in module.state_dict().items()}, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history}, buffer)
            storage.write_bytes_atomic(storage.join(cfg["checkpoints"], checkpoint_name(epoch)), buffer.getvalue())
            log.info("finetune epoch %d/%d: loss %.4f, validation accuracy %s", epoch + 1, cfg["epochs"], metrics["loss"],
                     "-" if metrics["validation_accuracy"] is None else f"{metrics['validation_accuracy']:.4f}")
        ray.train.report(metrics)
        if rank == 0:
            pause_point(f"finetune:epoch-{epoch + 1}")


def run_trainer(cfg: dict[str, Any], num_workers: int, use_gpu: bool, storage_path: str) -> Any:
    """``TorchTrainer.fit`` of :func:`train_loop` on ``num_workers`` workers of ``cfg["threads"]``
    CPUs each; the result (errors raised)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from ood_ray.autoencoder.train import run_config
    from ood_ray.io import storage

    if not storage.is_s3(storage_path):
        os.makedirs(storage_path, exist_ok=True)
    trainer = TorchTrainer(train_loop, train_loop_config=cfg,
                           scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": cfg["threads"]}),
                           run_config=run_config("ood-ray-finetune", storage_path))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result
