"""The embedding actor's precision and device options: mixed precision keeps the embeddings of a
model close to float32 (measured here on CPU with bfloat16); on CUDA (tests marked ``cuda``, skipped
without a GPU) the GPU actor gives the CPU's numbers, fp16 stays close, and the autoencoder trains
with ``use_gpu``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ood_ray.columns import EMBEDDING_PREFIX
from ood_ray.config import ConfigError, ModelConfig, load_config
from ood_ray.embed.actor import EmbedActor, EmbedSettings
from ood_ray.embed.models import inspect_models
from ood_ray.embed.preprocess import PIXELS_PREFIX, preprocessing_key

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _embed(precision: str, num_gpus: float = 0.0, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    info = inspect_models([ModelConfig(name="test_resnet")])[0]
    _, height, width = info.data_config["input_size"]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    batch = pa.table({"image_id": [f"{i}" for i in range(n)],
                      f"{PIXELS_PREFIX}{preprocessing_key(info.data_config)}": [p.tobytes() for p in pixels]})
    settings = EmbedSettings(top_k=3, max_full_probabilities=0, num_cpus=1, num_gpus=num_gpus, precision=precision)
    out = EmbedActor([info], settings)(batch)
    embedding = np.array(out.column(f"{EMBEDDING_PREFIX}{info.alias}").to_pylist(), dtype=np.float64)
    logits = np.array([row for row in out.column(f"score_energy_{info.alias}").to_pylist()], dtype=np.float64)
    return embedding, logits


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_autocast_keeps_embeddings_close_to_fp32():
    full, _ = _embed("fp32")
    mixed, _ = _embed("bf16")
    assert not np.array_equal(full, mixed)  # autocast really ran in lower precision
    assert _cosine(full, mixed).min() > 0.99


def test_unknown_precision_is_refused_with_key_and_value():
    with pytest.raises(ConfigError, match="embed.precision.*fp8"):
        load_config(None, ["embed.precision=fp8"], source="s", out="o")


@pytest.mark.cuda
@cuda
def test_gpu_actor_equals_cpu_actor_and_fp16_stays_close():
    cpu, cpu_energy = _embed("fp32")
    gpu, gpu_energy = _embed("fp32", num_gpus=1)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu_energy, cpu_energy, rtol=1e-3, atol=1e-3)
    half, _ = _embed("fp16", num_gpus=1)
    assert _cosine(cpu, half).min() > 0.999


@pytest.mark.cuda
@cuda
def test_autoencoder_trains_on_the_gpu(tmp_path):
    import ray

    from ood_ray.autoencoder.train import train_autoencoder

    if not ray.is_initialized():
        pytest.skip("needs the session's Ray")
    config = load_config(None, ["autoencoder.enabled=true", "autoencoder.use_gpu=true", "autoencoder.epochs=2"],
                         source="s", out="o").autoencoder
    pixels = np.random.default_rng(0).integers(0, 256, (64, config.image_size, config.image_size, 3), dtype=np.uint8)
    weights, report = train_autoencoder(pixels, config, str(tmp_path))
    assert report["use_gpu"] and len(weights) > 0 and np.isfinite(report["final_loss"])
