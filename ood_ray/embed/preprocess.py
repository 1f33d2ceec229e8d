"""Model input from the one decode: timm's eval resize and crop on CPU, normalisation on device.

In the scan task, each decoded image is brought to RGB (grey replicated, alpha dropped as
``Image.convert("RGB")`` does, 16-bit scaled by ``255 / 65535``), then resized and cropped with
exactly the transforms of timm's ``create_transform(**data_config)`` before ``ToTensor`` (resize
of the shorter side to ``floor(size / crop_pct)`` with the model's interpolation, centre crop).
The result travels as ``H x W x 3`` uint8 bytes (4x smaller than float32); the embedding actor
divides by 255 and normalises with the model's mean and std on its device -- the same numbers as
timm's ``ToTensor`` + ``Normalize``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from ood_ray.columns import PIXELS_PREFIX  # noqa: F401 - model-ready pixel columns (dropped by the actor)


def preprocessing_key(data_config: dict[str, Any]) -> str:
    """A column-safe key shared by models with the same resize/crop (``px_<h>x<w>_<interp>_<crop>``)."""
    _, height, width = data_config["input_size"]
    crop = f"{data_config['crop_pct']:.4f}".replace(".", "p")
    return f"px_{height}x{width}_{data_config['interpolation']}_{crop}_{data_config['crop_mode']}"


@lru_cache(maxsize=16)
def _resize_crop(input_size: tuple[int, int, int], interpolation: str, crop_pct: float, crop_mode: str) -> Any:
    from timm.data import create_transform

    transform = create_transform(
        input_size=input_size, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_training=False,
    )
    steps = [t for t in transform.transforms if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")]
    return steps


def to_rgb_image(pixels: np.ndarray) -> Image.Image:
    """RGB Pillow image of an ``(H, W, C)`` uint8/uint16 decode (what timm's loader would see)."""
    if pixels.dtype == np.uint16:
        pixels = np.round(pixels.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    channels = pixels.shape[2]
    if channels in (1, 2):
        rgb = np.repeat(pixels[:, :, :1], 3, axis=2)
    else:
        rgb = pixels[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def prepare_model_input(pixels: np.ndarray, data_config: dict[str, Any]) -> bytes:
    """Resize and crop one decoded image for a model; ``H * W * 3`` uint8 bytes."""
    steps = _resize_crop(tuple(data_config["input_size"]), data_config["interpolation"],
                         float(data_config["crop_pct"]), data_config["crop_mode"])
    image = to_rgb_image(pixels)
    for step in steps:
        image = step(image)
    array = np.asarray(image, dtype=np.uint8)
    _, height, width = data_config["input_size"]
    if array.shape != (height, width, 3):
        raise ValueError(f"preprocessing gave {array.shape}, expected {(height, width, 3)}")
    return array.tobytes()


def normalize_batch(images: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """``(N, H, W, 3)`` uint8 tensor -> ``(N, 3, H, W)`` float32 ``(x / 255 - mean) / std``."""
    import torch

    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t)
