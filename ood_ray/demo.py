"""The example dataset: generated pictures with planted defects of every kind we detect.

``ood-ray demo FOLDER`` writes ``FOLDER/images/<split>/<label>/<file>`` (splits ``train``/``test``,
labels ``circles``/``squares``/``stripes``), mixed sizes, modes (L, RGB, RGBA, P, CMYK, I;16) and
formats (PNG, JPEG, WebP, GIF, TIFF, BMP), plus:

- bad files: not an image, an empty file, a truncated JPEG and PNG, a PNG whose header claims
  30000 x 30000 pixels (a decompression bomb: ``too_large`` without decoding), a float TIFF
  (``unsupported_mode``);
- duplicates: a byte copy in the other split (exact + leakage), the same pixels saved as BMP
  (exact by pixels, different bytes), near copies (crop by 2 px, JPEG re-encode at quality 70,
  resize to 90%);
- extremes: all black, all white, a 400 x 24 strip, salt-and-pepper noise.

Beside the images it writes ``FOLDER/manifest.csv`` (every file plus one URI that does not exist, and an extra
``photographer`` column that is carried into the output) and ``FOLDER/PLANTED.json`` with what
was planted, which the tests check against.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

LABELS = ("circles", "squares", "stripes")
SPLITS = {"train": 14, "test": 6}
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP")
IMAGES = "images"
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}


def draw_picture(label: str, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A textured random background with shapes of the label's kind (RGB).

    The background is a sum of three random plane waves per channel plus pixel noise, so that
    two pictures share no large-scale structure and their perceptual hashes differ.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    background = np.empty((height, width, 3))
    for c in range(3):
        field = np.full((height, width), rng.uniform(60, 190))
        for _ in range(3):
            angle, frequency = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.15)
            phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(15, 45)
            field += amplitude * np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        background[:, :, c] = field
    background += rng.normal(0, 5, size=background.shape)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x0, y0 = int(rng.integers(-8, width - 8)), int(rng.integers(-8, height - 8))
        size = int(rng.integers(8, max(10, min(width, height) // 2)))
        box = (x0, y0, x0 + size, y0 + int(size * rng.uniform(0.6, 1.4)))
        if label == "circles":
            draw.ellipse(box, fill=colour)
        elif label == "squares":
            draw.rectangle(box, fill=colour)
        else:
            angle = rng.uniform(0, np.pi)
            dx, dy = np.cos(angle) * (width + height), np.sin(angle) * (width + height)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=int(rng.integers(2, 6)))
    return image


def _encode(image: Image.Image, fmt: str, mode: str, **kwargs: Any) -> tuple[bytes, str]:
    """Encode ``image`` in ``mode``; the format falls back to one that can hold the mode."""
    if mode == "I;16":
        arr = (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(arr)
        fmt = "PNG" if fmt not in ("PNG", "TIFF") else fmt
    elif mode == "CMYK":
        image = image.convert("CMYK")
        fmt = "JPEG" if fmt not in ("JPEG", "TIFF") else fmt
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        fmt = "GIF" if fmt not in ("PNG", "GIF", "BMP", "TIFF") else fmt
    elif mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(image.size)
        image = image.convert("RGBA")
        image.putalpha(alpha)
        fmt = "PNG" if fmt not in ("PNG", "WEBP", "TIFF") else fmt
    elif mode == "L":
        image = image.convert("L")
    if fmt == "GIF" and image.mode not in ("P", "L"):
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue(), fmt


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (grey, 8-bit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(folder: str, relative: str, data: bytes) -> str:
    path = os.path.join(folder, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return relative


def write_demo_dataset(root: str, seed: int = 0) -> list[str]:
    """Write the example dataset under ``root`` (replacing it); returns the image paths.

    Images go to ``root/images/<split>/<label>/``; ``root/manifest.csv`` and
    ``root/PLANTED.json`` sit beside them. Returned paths are relative to ``root/images``.
    """
    if os.path.isdir(root):
        shutil.rmtree(root)
    folder = os.path.join(root, IMAGES)
    rng = np.random.default_rng(seed)
    files: list[str] = []
    pictures: dict[str, Image.Image] = {}
    encodings: dict[str, tuple[str, str]] = {}
    modes = ("RGB", "RGB", "RGB", "L", "RGBA", "P", "CMYK", "I;16")
    i = 0
    for split, count in SPLITS.items():
        for label in LABELS:
            for k in range(count):
                width, height = int(rng.integers(48, 97)), int(rng.integers(48, 97))
                picture = draw_picture(label, rng, width, height)
                data, fmt = _encode(picture, FORMATS[i % len(FORMATS)], modes[i % len(modes)])
                relative = f"{split}/{label}/{label}_{k:03d}.{EXTENSIONS[fmt]}"
                files.append(_write(folder, relative, data))
                pictures[relative] = picture
                encodings[relative] = (fmt, modes[i % len(modes)])
                i += 1

    def originals(fmt: str, split: str) -> list[str]:
        return [r for r, enc in encodings.items() if enc == (fmt, "RGB") and r.startswith(split)]

    planted: dict[str, Any] = {"status": {}, "exact": [], "near": [], "extreme": {}, "leakage": []}

    def bad(relative: str, data: bytes, status: str) -> None:
        files.append(_write(folder, relative, data))
        planted["status"][relative] = status

    bad("train/circles/not_an_image.jpg", b"this is a text file, not a JPEG\n" * 10, "undecodable")
    bad("train/squares/empty.png", b"", "empty")
    jpeg, _ = _encode(draw_picture("squares", rng, 80, 60), "JPEG", "RGB", quality=90)
    bad("train/squares/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    png, _ = _encode(draw_picture("circles", rng, 80, 60), "PNG", "RGB")
    bad("test/circles/truncated.png", png[: len(png) * 2 // 3], "truncated")
    bad("train/stripes/bomb.png", bomb_png(), "too_large")
    buffer = io.BytesIO()
    Image.fromarray(rng.random((32, 32)).astype(np.float32)).save(buffer, format="TIFF")
    bad("train/stripes/float.tif", buffer.getvalue(), "unsupported_mode")

    # Exact duplicates: a byte copy across splits (leakage), and the same pixels as BMP.
    original = originals("PNG", "train")[0]
    with open(os.path.join(folder, original), "rb") as f:
        original_bytes = f.read()
    copy = "test/" + original.split("/", 1)[1].replace(".png", "_copy.png")
    files.append(_write(folder, copy, original_bytes))
    planted["exact"].append([original, copy])
    planted["leakage"].append([original, copy])
    same_pixels = originals("JPEG", "train")[0]
    decoded = Image.open(os.path.join(folder, same_pixels))
    buffer = io.BytesIO()
    decoded.convert("RGB").save(buffer, format="BMP")
    as_bmp = same_pixels.replace(".jpg", "_as_bmp.bmp")
    files.append(_write(folder, as_bmp, buffer.getvalue()))
    planted["exact"].append([same_pixels, as_bmp])

    # Near duplicates of RGB PNG originals: crop, JPEG re-encode, resize.
    near_sources = originals("PNG", "train")[1:3] + originals("PNG", "test")[:1]
    for source, variant in zip(near_sources, ("crop", "jpeg", "resize")):
        picture = pictures[source]
        if variant == "crop":
            changed = picture.crop((2, 2, picture.width - 2, picture.height - 2))
            data, _ = _encode(changed, "PNG", "RGB")
            name = source.replace(".png", "_crop.png")
        elif variant == "jpeg":
            data, _ = _encode(picture, "JPEG", "RGB", quality=70)
            name = source.replace(".png", "_q70.jpg")
        else:
            changed = picture.resize((int(picture.width * 0.9), int(picture.height * 0.9)), Image.Resampling.BILINEAR)
            data, _ = _encode(changed, "PNG", "RGB")
            name = source.replace(".png", "_small.png")
        files.append(_write(folder, name, data))
        planted["near"].append([source, name])

    # Extremes.
    extremes = {
        "train/squares/all_black.png": (Image.new("RGB", (64, 64), (0, 0, 0)), ["zeros", "mean", "darkness"]),
        "train/circles/all_white.png": (Image.new("RGB", (64, 64), (255, 255, 255)), ["mean", "brightness"]),
        # its aspect ratio is within this dataset's wide spread of shapes (relative lint), but odd (named issue)
        "train/stripes/wide_strip.png": (draw_picture("stripes", rng, 400, 24), ["width"]),
        "test/stripes/noise.png": (
            Image.fromarray((rng.random((64, 64, 3)) > 0.5).astype(np.uint8) * 255, "RGB"),
            ["std", "entropy", "noise_ratio"],
        ),
    }
    for relative, (picture, metrics) in extremes.items():
        data, _ = _encode(picture, "PNG", "RGB")
        files.append(_write(folder, relative, data))
        planted["extreme"][relative] = metrics
    # The named quality issues each extreme has (absolute thresholds; see ood_ray.lint.issues).
    planted["issues"] = {
        "train/squares/all_black.png": ["dark", "low_information", "grayscale"],
        "train/circles/all_white.png": ["light", "low_information", "grayscale"],
        "train/stripes/wide_strip.png": ["odd_aspect_ratio"],
        "test/stripes/noise.png": ["noisy"],
    }

    with open(os.path.join(root, "manifest.csv"), "w", encoding="utf-8") as f:
        f.write("uri,split,label,photographer\n")
        for relative in sorted(files):
            split, label = relative.split("/")[:2]
            f.write(f"{IMAGES}/{relative},{split},{label},demo-{zlib.crc32(relative.encode()) % 3}\n")
        f.write(f"{IMAGES}/test/circles/deleted_before_audit.png,test,circles,demo-0\n")
    planted["manifest_missing"] = ["test/circles/deleted_before_audit.png"]
    planted["files"] = sorted(files)
    with open(os.path.join(root, "PLANTED.json"), "w", encoding="utf-8") as f:
        json.dump(planted, f, indent=2)
    return sorted(files)
