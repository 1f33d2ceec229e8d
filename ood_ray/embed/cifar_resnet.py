"""CIFAR ResNets (He et al., CVPR 2016, section 4.2; "option A" shortcuts) with timm's interface.

Use them through the custom-import path, e.g. with the checkpoints of
``akamaster/pytorch_resnet_cifar10``::

    models:
      - name: ood_ray.embed.cifar_resnet:resnet56
        checkpoint: ../shared/data/cifar10_resnets/resnet56-4bfd9763.th

Architecture: a 3x3 stem (16 channels, BN, ReLU, no pooling), three stages of ``n`` basic blocks
with 16, 32 and 64 channels (``n = (depth - 2) / 6``; the first block of stages 2 and 3 has stride
2), option-A shortcuts (stride-2 subsampling and zero-padded channels: no parameters), global
average pooling to a 64-d embedding and a linear classifier. Parameter names match the checkpoints
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``). ``pretrained_cfg``: 32 x 32 input, no
resize or crop, ImageNet mean and std (how these checkpoints were trained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRETRAINED_CFG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "num_classes": 10,
}


class _ShortcutA(nn.Module):
    """Identity shortcut that subsamples by 2 and zero-pads the new channels (no parameters)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``forward_features`` -> ``(N, 64, 8, 8)``; ``forward_head(pre_logits=True)`` -> ``(N, 64)``."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = 64
        self.pretrained_cfg = dict(PRETRAINED_CFG, num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.linear(x)

    def get_classifier(self) -> nn.Module:
        """The last linear layer, as timm's models give it (the head-based OOD scores read it)."""
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        """A new last layer for ``num_classes`` outputs (timm's interface; fine-tuning uses it)."""
        self.num_classes = num_classes
        self.linear = nn.Linear(self.linear.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resnet20() -> CifarResNet:
    return CifarResNet(20)


def resnet32() -> CifarResNet:
    return CifarResNet(32)


def resnet44() -> CifarResNet:
    return CifarResNet(44)


def resnet56() -> CifarResNet:
    return CifarResNet(56)
