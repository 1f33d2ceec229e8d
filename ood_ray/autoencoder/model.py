"""The convolutional autoencoder and its score.

Encoder: ``3 -> 32 -> 64`` channels by two stride-2 3x3 convolutions (ReLU), then a 1x1 convolution
to ``latent_channels`` (the bottleneck, ``latent_channels x H/4 x W/4``); the decoder mirrors it with
transposed convolutions and a sigmoid. Inputs are RGB in ``[0, 1]`` at ``image_size`` squared.

``score_recon`` (higher = more OOD) is the per-image mean squared reconstruction error
``mean_{c,h,w} (x - AE(x))^2`` -- the autoencoder drift seed's anomaly score (an AE trained on one
class reconstructs other objects much worse); Sakurada & Yairi, "Anomaly detection using
autoencoders with nonlinear dimensionality reduction", MLSDA 2014.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def build_autoencoder(latent_channels: int = 16) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, latent_channels, 1), nn.ReLU(),
        nn.Conv2d(latent_channels, 64, 1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1), nn.Sigmoid(),
    )


def pixels_to_tensor(pixels: np.ndarray) -> Any:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)


def reconstruction_error(model: Any, pixels: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Per-image mean squared reconstruction error of ``(N, H, W, 3)`` uint8 images."""
    import torch

    out = np.zeros(len(pixels), np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            x = pixels_to_tensor(pixels[start:start + batch_size])
            out[start:start + len(x)] = ((model(x) - x) ** 2).mean(dim=(1, 2, 3)).numpy()
    return out


def state_to_bytes(state: dict[str, Any]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_autoencoder(data: bytes, latent_channels: int) -> Any:
    """The autoencoder from saved weights (``weights_only=True``: no pickle)."""
    import torch

    model = build_autoencoder(latent_channels)
    model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
    return model.eval()
