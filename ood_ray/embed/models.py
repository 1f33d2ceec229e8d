"""Loading models: a timm name, a timm name plus a checkpoint, or a custom import path.

Every model ends up as a ``torch.nn.Module`` with timm's interface:

- ``forward_features(x)`` then ``forward_head(features, pre_logits=True)``: the pooled,
  penultimate embedding (what ``embeddings`` stores);
- ``forward_head(features)`` (or ``forward(x)``): logits, when ``num_classes > 0``;
- ``pretrained_cfg``: ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` for
  preprocessing (resolved with timm's ``resolve_data_config``; the model entry may override them).

A custom model is ``package.module:function``; the module is imported from the working directory
or ``PYTHONPATH`` and the function is called with no arguments. Checkpoints (local or ``s3://``)
are read with ``torch.load(weights_only=True)`` or as safetensors -- never a bare pickle; a
top-level ``state_dict``/``model``/``model_state_dict`` entry is unwrapped and a ``module.``
prefix (``DataParallel``) stripped; the load is strict, so a checkpoint for another architecture
fails with the missing and unexpected keys named.

:func:`inspect_models` loads every model once on the driver, so an unknown name, an unreadable
checkpoint, a wrong architecture or unreachable pretrained weights fail before any cluster work.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_ray.config import ConfigError, ModelConfig
from ood_ray.io import storage

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class ModelInfo:
    """What the driver learned about a model; shipped to scan tasks and actors."""

    alias: str
    spec: ModelConfig
    data_config: dict[str, Any]
    num_classes: int
    embedding_dim: int
    import_root: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def _import_custom(name: str, import_root: str | None = None) -> Any:
    module_name, _, function_name = name.partition(":")
    if import_root and import_root not in sys.path:
        sys.path.insert(0, import_root)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: cannot import module {module_name!r} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"model {name!r}: {module_name!r} has no function {function_name!r}")
    return module, function


def _module_root(module: Any, module_name: str) -> str | None:
    """The folder to put on ``sys.path`` so that ``module_name`` imports elsewhere."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = os.path.dirname(os.path.abspath(path))
    for _ in range(module_name.count(".")):
        root = os.path.dirname(root)
    return root


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a TCP connection within the timeout."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool):
    """Make huggingface_hub use its local cache only (no retries against an unreachable hub)."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _read_checkpoint(uri: str) -> dict[str, Any]:
    import torch

    try:
        data = storage.read_bytes(uri)
    except Exception as exc:  # noqa: BLE001 - any read failure is the user's path to fix
        raise ConfigError(f"checkpoint={uri!r}: cannot read ({type(exc).__name__}: {exc})") from None
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return dict(load_safetensors(data))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"checkpoint={uri!r}: not loadable with torch.load(weights_only=True) or as safetensors "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint={uri!r}: holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


#: Seed of the random initialisation of models built without weights, so that every actor (and
#: the driver) holds the same model.
INIT_SEED = 0


def build_model(spec: ModelConfig, import_root: str | None = None) -> Any:
    """The ``torch.nn.Module`` for ``spec`` in eval mode (weights loaded), or :class:`ConfigError`.

    Weights not given by ``pretrained`` or ``checkpoint`` come from a random initialisation seeded
    with :data:`INIT_SEED`: every actor builds the identical model.
    """
    import timm
    import torch

    torch.manual_seed(INIT_SEED)
    if ":" in spec.name:
        _, function = _import_custom(spec.name, import_root)
        model = function()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model {spec.name!r}: the function returned {type(model).__name__}, not a torch.nn.Module")
        for attribute in ("forward_features", "forward_head"):
            if not callable(getattr(model, attribute, None)):
                raise ConfigError(f"model {spec.name!r}: has no {attribute}() (timm's interface is required)")
        if spec.num_classes is not None and spec.num_classes != getattr(model, "num_classes", None):
            # a fine-tuned custom model with another class count (timm's reset_classifier)
            if not callable(getattr(model, "reset_classifier", None)):
                raise ConfigError(f"model {spec.name!r}: num_classes={spec.num_classes} needs reset_classifier() "
                                  "(timm's interface) on the custom model")
            model.reset_classifier(spec.num_classes)
    else:
        if not timm.is_model(spec.name):
            close = timm.list_models(f"*{spec.name[:6]}*")[:5]
            raise ConfigError(f"model {spec.name!r}: not a timm model name" + (f" (similar: {', '.join(close)})" if close else ""))
        kwargs: dict[str, Any] = {}
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        offline = spec.pretrained and not hub_reachable()
        try:
            with _hub_offline(offline):
                model = timm.create_model(spec.name, pretrained=spec.pretrained, **kwargs)
        except Exception as exc:  # noqa: BLE001 - e.g. the hub is unreachable
            if offline:
                what = "pretrained weights are not in the local cache and the model hub is not reachable"
            elif spec.pretrained:
                what = "pretrained weights could not be loaded"
            else:
                what = "could not be built"
            raise ConfigError(f"model {spec.name!r}: {what} ({type(exc).__name__}: {str(exc)[:200]})") from None
    if spec.checkpoint:
        state = _read_checkpoint(spec.checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            message = " ".join(str(exc).split())
            raise ConfigError(
                f"checkpoint={spec.checkpoint!r} does not fit model {spec.name!r}: {message[:500]}"
            ) from None
    return model.eval()


def resolve_preprocessing(model: Any, spec: ModelConfig) -> dict[str, Any]:
    """timm's data config for ``model`` with the entry's overrides (input size, mean, std, ...)."""
    from timm.data import resolve_data_config

    overrides: dict[str, Any] = {}
    if spec.input_size is not None:
        size = list(spec.input_size)
        overrides["input_size"] = tuple(size if len(size) == 3 else [3, *size])
    for key in ("mean", "std", "interpolation", "crop_pct"):
        if getattr(spec, key) is not None:
            overrides[key] = tuple(getattr(spec, key)) if key in ("mean", "std") else getattr(spec, key)
    config = resolve_data_config(overrides, model=model)
    return {
        "input_size": tuple(int(v) for v in config["input_size"]),
        "interpolation": str(config.get("interpolation", "bilinear")),
        "mean": tuple(float(v) for v in config["mean"]),
        "std": tuple(float(v) for v in config["std"]),
        "crop_pct": float(config.get("crop_pct") or 1.0),
        "crop_mode": str(config.get("crop_mode") or "center"),
    }


def embed_and_logits(model: Any, x: Any) -> tuple[Any, Any | None]:
    """``(pooled embedding, logits or None)`` with one pass through the trunk."""
    features = model.forward_features(x)
    embedding = model.forward_head(features, pre_logits=True)
    logits = model.forward_head(features) if getattr(model, "num_classes", 0) else None
    return embedding, logits


def classifier_head(info: ModelInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W, b)`` of the model's last linear layer, ``logits = W z + b`` on its embeddings ``z``:
    timm's ``get_classifier()`` (a custom model provides the same method returning a
    ``torch.nn.Linear``). ``None`` (with the reason logged) when there is none or it does not map
    the embedding to the logits (a head with more than one layer, say)."""
    import torch

    if info.num_classes == 0:
        return None
    model = build_model(info.spec, info.import_root)
    head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not isinstance(head, torch.nn.Linear):
        log.info("model %s: no linear classifier head (get_classifier() gave %s): the head-based scores are skipped",
                 info.alias, type(head).__name__)
        return None
    if head.in_features != info.embedding_dim or head.out_features != info.num_classes:
        log.info("model %s: classifier %d -> %d does not map the %d-d embedding to %d logits: head-based scores skipped",
                 info.alias, head.in_features, head.out_features, info.embedding_dim, info.num_classes)
        return None
    weight = head.weight.detach().double().cpu().numpy()
    bias = head.bias.detach().double().cpu().numpy() if head.bias is not None else np.zeros(head.out_features)
    return weight, bias


def inspect_models(specs: list[ModelConfig]) -> list[ModelInfo]:
    """Load each model once on the driver: validates it and learns its shapes and preprocessing."""
    import torch

    infos = []
    for spec in specs:
        import_root = None
        if ":" in spec.name:
            module, _ = _import_custom(spec.name)
            import_root = _module_root(module, spec.name.partition(":")[0])
        model = build_model(spec, import_root)
        data_config = resolve_preprocessing(model, spec)
        channels, height, width = data_config["input_size"]
        if channels != 3:
            raise ConfigError(f"model {spec.name!r}: input_size {data_config['input_size']} -- only 3-channel inputs are supported")
        with torch.no_grad():
            embedding, logits = embed_and_logits(model, torch.zeros(1, 3, height, width))
        if embedding.ndim != 2:
            raise ConfigError(f"model {spec.name!r}: forward_head(pre_logits=True) gave shape {tuple(embedding.shape)}, expected (N, D)")
        provenance: dict[str, Any] = {"name": spec.name, "pretrained": spec.pretrained,
                                      "parameters": int(sum(p.numel() for p in model.parameters()))}
        if spec.checkpoint:
            provenance["checkpoint"] = spec.checkpoint
            provenance["checkpoint_sha256"] = hashlib.sha256(storage.read_bytes(spec.checkpoint)).hexdigest()
        infos.append(ModelInfo(
            alias=spec.column_alias, spec=spec, data_config=data_config,
            num_classes=int(logits.shape[1]) if logits is not None else 0,
            embedding_dim=int(embedding.shape[1]), import_root=import_root, provenance=provenance,
        ))
        log.info("model %s: %s, embedding %d, classes %d, input %s", spec.column_alias, spec.name,
                 infos[-1].embedding_dim, infos[-1].num_classes, data_config["input_size"])
    return infos


def reference_models(config: Any, reference: Any = None) -> list[ModelConfig]:
    """The models to run: ``config.models``, or with a ``--reference`` run (a
    :class:`ood_ray.run.state.RunState`) that run's models -- given again, they must be the same."""
    if reference is None:
        return list(config.models)
    saved = list(reference.config.models)
    if not saved:
        raise ConfigError(f"reference={reference.out!r}: that run has no models to score against")
    if config.models and [(m.name, m.column_alias) for m in config.models] != [(m.name, m.column_alias) for m in saved]:
        raise ConfigError(f"models: must be the reference run's models {[m.name for m in saved]} (or left out)")
    return saved
