"""Content hashes (exact) and perceptual hashes (near-duplicate) of one image.

- ``hash_file``: XXH3-128 of the object's bytes, as 32 hex characters. Two objects with the same
  bytes are the same file.
- ``hash_pixels``: XXH3-128 over ``dtype | height | width | channels | pixel bytes`` of the
  decoded array. The same picture stored as PNG and as BMP (or with different metadata) has one
  ``hash_pixels``; a 1-pixel change gives another. DataEval's ``xxhash`` stat hashes the raw array
  only, so two images with the same bytes but transposed shapes collide there and not here.
- ``phash`` (DataEval ``_phash``): Rec. 601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` truncated to
  uint8 (first channel for 1-2 channel images, alpha ignored), resized with Lanczos to ``s x s``
  where ``s = 8 * min((min(H, W) - 1) // 8, 4)``; 2-D DCT-II; the 8 x 8 lowest frequencies; bit =
  coefficient > their median; 64 bits, first bit most significant.
- ``dhash`` (DataEval ``_dhash``): the same luma resized to 9 x 9, its first 8 rows kept, bit =
  pixel > its right neighbour; 64 bits.

Both perceptual hashes are ``None`` for images smaller than 9 pixels on a side (DataEval returns an
empty string and a warning) and for images whose resized luma is constant: such an image has no
structure to hash, and every constant image -- black, white or grey -- would otherwise share one
hash and be reported as near duplicates of each other (DataEval does report them). Identical
constant images are still found by ``hash_pixels``. They are returned as unsigned 64-bit integers so that the Hamming
distance is ``bit_count(a XOR b)`` in DuckDB and NumPy. 16-bit images are brought to 8 bits by
``k * 255 / 65535`` before hashing.
"""

from __future__ import annotations

import numpy as np
import xxhash
from PIL import Image
from scipy.fft import dct

HASH_SIZE = 8
_MAX_FACTOR = 4
_LUMA = np.array([0.299, 0.587, 0.114])


def compute_hash_file(data: bytes) -> str:
    """XXH3-128 of the raw bytes, hex."""
    return xxhash.xxh3_128_hexdigest(data)


def compute_hash_pixels(pixels: np.ndarray) -> str:
    """XXH3-128 of dtype, shape and pixel bytes of a decoded ``(H, W, C)`` array, hex."""
    h = xxhash.xxh3_128()
    h.update(f"{pixels.dtype.str}|{pixels.shape[0]}|{pixels.shape[1]}|{pixels.shape[2]}|".encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


def compute_luma(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 luma of an ``(H, W, C)`` uint8/uint16 image (DataEval's canonical grayscale)."""
    if pixels.dtype == np.uint16:
        scaled = pixels.astype(np.float64) * (255.0 / 65535.0)
        if pixels.shape[2] >= 3:
            scaled = scaled[:, :, :3] @ _LUMA
        else:
            scaled = scaled[:, :, 0]
        return np.clip(scaled, 0, 255).astype(np.uint8)
    if pixels.shape[2] >= 3:
        return np.clip(pixels[:, :, :3] @ _LUMA, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels[:, :, 0])


def _bits_to_uint64(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def _resize(luma: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(luma).resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)


def compute_phash(luma: np.ndarray) -> int | None:
    """64-bit DCT perceptual hash of a uint8 luma image; ``None`` below 9 px or when constant."""
    min_dim = min(luma.shape)
    if min_dim < HASH_SIZE + 1:
        return None
    size = HASH_SIZE * min((min_dim - 1) // HASH_SIZE, _MAX_FACTOR)
    small = _resize(luma, size)
    if small.min() == small.max():
        return None
    coefficients = dct(dct(small, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    return _bits_to_uint64(coefficients > np.median(coefficients))


def compute_dhash(luma: np.ndarray) -> int | None:
    """64-bit horizontal-gradient hash of a uint8 luma image; ``None`` below 9 px or when constant."""
    if min(luma.shape) < HASH_SIZE + 1:
        return None
    small = _resize(luma, HASH_SIZE + 1)[:HASH_SIZE, :]
    if small.min() == small.max():
        return None
    return _bits_to_uint64(small[:, :-1] > small[:, 1:])


def hamming_distance(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Number of differing bits between uint64 hashes (vectorised)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)
