"""A user's own network, reached through the custom import path ``custom_models:tiny_classifier``.

It follows timm's interface without being a timm model: ``forward_features``, ``forward_head``
with ``pre_logits``, ``num_classes`` and a ``pretrained_cfg`` for preprocessing.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {
            "input_size": (3, 24, 24),
            "interpolation": "bilinear",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The last linear layer (timm's interface; the head-based OOD scores read it)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new last layer for ``num_classes`` outputs (timm's interface; fine-tuning uses it)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.fc.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny_classifier() -> TinyClassifier:
    return TinyClassifier()


def not_a_module() -> str:
    return "not a module"


class ChannelStatsEmbedder(nn.Module):
    """A deterministic, weight-free embedder: per channel the mean, the standard deviation and the
    mean absolute horizontal and vertical gradients (12 values). Smooth pictures and their near
    copies land close together; pixel noise lands far away. No classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 0
        self.pretrained_cfg = {
            "input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(2, 3))
        dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(2, 3))
        return torch.cat([x.mean(dim=(2, 3)) + 2.0, x.std(dim=(2, 3)), dx, dy], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)


def channel_stats_embedder() -> ChannelStatsEmbedder:
    return ChannelStatsEmbedder()
