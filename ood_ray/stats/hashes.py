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

- ``gray16`` (the image's thumbnail): a 16 x 16 grayscale picture of the image (256 uint8 bytes, row by row): the
  Lanczos resize of phash's ``s x s`` luma to 16 x 16 (the phash resize itself when ``s = 16``).
  Not a hash: the near-duplicate search checks the pixels of two images a hash links (their
  normalised correlation, :mod:`ood_ray.dedup.hash_groups`), which tells apart the periodic
  textures whose hash bits agree by chance.

Both perceptual hashes (and ``gray16``) are ``None`` for images smaller than 9 pixels on a side (DataEval returns an
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

from ood_ray.stats.resample import MATRIX_MAX_PIXELS, resize_stack

HASH_SIZE = 8
#: Side of the ``gray16`` thumbnail (pixels), and the bytes it holds.
THUMBNAIL_SIZE = 16
THUMBNAIL_VALUES = THUMBNAIL_SIZE * THUMBNAIL_SIZE
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


#: Pixels converted to luma at once: bounds the float64 temporaries of a large image.
_LUMA_STRIPE_PIXELS = 1 << 20


def _luma_block(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        scaled = pixels.astype(np.float64) * (255.0 / 65535.0)
        scaled = scaled[..., :3] @ _LUMA if pixels.shape[-1] >= 3 else scaled[..., 0]
        return np.clip(scaled, 0, 255).astype(np.uint8)
    if pixels.shape[-1] >= 3:
        return np.clip(pixels[..., :3] @ _LUMA, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels[..., 0])


def compute_luma(pixels: np.ndarray) -> np.ndarray:
    """uint8 luma of ``(..., H, W, C)`` uint8/uint16 pixels (DataEval's canonical grayscale).

    Computed in stripes of rows, so the float64 temporaries stay near ``_LUMA_STRIPE_PIXELS``
    values whatever the image size (the values are the same as in one pass)."""
    height, width = pixels.shape[-3], pixels.shape[-2]
    images = int(np.prod(pixels.shape[:-3])) if pixels.ndim > 3 else 1
    rows = max(1, _LUMA_STRIPE_PIXELS // max(1, width * images))
    if rows >= height:
        return _luma_block(pixels)
    out = np.empty(pixels.shape[:-1], np.uint8)
    for start in range(0, height, rows):
        out[..., start:start + rows, :] = _luma_block(pixels[..., start:start + rows, :, :])
    return out


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """``(N, 64)`` booleans -> ``uint64[N]``, first bit most significant."""
    return np.packbits(bits.reshape(len(bits), -1), axis=1).view(">u8").reshape(-1).astype(np.uint64)


def _constant(small: np.ndarray) -> np.ndarray:
    flat = small.reshape(len(small), -1)
    return flat.min(axis=1) == flat.max(axis=1)


def as_optional(values: np.ndarray, constant: np.ndarray) -> list[int | None]:
    """Hash values as Python ints, ``None`` where the resized image was constant."""
    return [None if c else int(v) for v, c in zip(values.tolist(), constant.tolist())]


def phash_values(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 phash, constant)`` of a stack of resized images."""
    # only the 8 lowest frequencies are kept: the second DCT runs on those 8 rows alone (each row's
    # transform is independent of the others, so the values are the same to the bit)
    coefficients = dct(dct(small, axis=1)[:, :HASH_SIZE, :], axis=2)[:, :, :HASH_SIZE].reshape(len(small), -1)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return _pack_rows(bits), _constant(small)


def dhash_values(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 dhash, constant)`` of a stack of 9 x 9 resized images."""
    small = small[:, :HASH_SIZE, :]
    return _pack_rows(small[:, :, :-1] > small[:, :, 1:]), _constant(small)


def resized_for_hashes(lumas: np.ndarray, kinds: tuple[str, ...] = ("phash", "dhash")
                       ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The Lanczos resizes both hashes start from: ``(N, s, s)`` for phash and ``(N, 9, 9)`` for
    dhash (float64; ``None`` for a kind not in ``kinds``), or ``None`` below 9 px on a side. Small
    images (up to ``MATRIX_MAX_PIXELS``) are resized as a stack by :func:`ood_ray.stats.resample.resize_stack`
    (Pillow's bytes, without a Pillow call per image); larger ones are wrapped once as a Pillow
    image and resized once per kind."""
    n, height, width = lumas.shape
    min_dim = min(height, width)
    if min_dim < HASH_SIZE + 1:
        return None
    size = HASH_SIZE * min((min_dim - 1) // HASH_SIZE, _MAX_FACTOR)
    want_p, want_d = "phash" in kinds, "dhash" in kinds
    if height * width <= MATRIX_MAX_PIXELS:  # Pillow's bytes, by two matrix products over the stack
        lumas = np.ascontiguousarray(lumas)
        return (resize_stack(lumas, size, size).astype(np.float64) if want_p else None,
                resize_stack(lumas, HASH_SIZE + 1, HASH_SIZE + 1).astype(np.float64) if want_d else None)
    lanczos = Image.Resampling.LANCZOS
    for_phash = np.empty((n, size * size), np.uint8)
    for_dhash = np.empty((n, (HASH_SIZE + 1) ** 2), np.uint8)
    for i, luma in enumerate(lumas):
        image = Image.frombuffer("L", (width, height), np.ascontiguousarray(luma).tobytes(), "raw", "L", 0, 1)
        if want_p:
            for_phash[i] = np.frombuffer(image.resize((size, size), lanczos).tobytes(), np.uint8)
        if want_d:
            for_dhash[i] = np.frombuffer(image.resize((HASH_SIZE + 1, HASH_SIZE + 1), lanczos).tobytes(), np.uint8)
    return (for_phash.reshape(n, size, size).astype(np.float64) if want_p else None,
            for_dhash.reshape(n, HASH_SIZE + 1, HASH_SIZE + 1).astype(np.float64) if want_d else None)


def thumbnails_of_resized(for_phash: np.ndarray, constant: np.ndarray) -> list[bytes | None]:
    """The ``gray16`` thumbnail of each image from phash's ``(N, s, s)`` resize (see module docstring):
    256 bytes each, ``None`` where the image is constant."""
    small = for_phash.astype(np.uint8)
    if small.shape[1] != THUMBNAIL_SIZE:
        small = resize_stack(small, THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    flat = np.ascontiguousarray(small).reshape(len(small), -1)
    return [None if c else row.tobytes() for row, c in zip(flat, constant.tolist())]


def hashes_of_resized(for_phash: np.ndarray, for_dhash: np.ndarray) -> tuple[list[int | None], list[int | None]]:
    """``(phash, dhash)`` from :func:`resized_for_hashes`' stacks: the DCTs, medians and bit packing
    run on the whole stack."""
    return as_optional(*phash_values(for_phash)), as_optional(*dhash_values(for_dhash))


def compute_batch_hashes(lumas: np.ndarray) -> tuple[list[int | None], list[int | None]]:
    """``(phash, dhash)`` of ``N`` same-shape uint8 luma images ``(N, H, W)``.

    ``None`` below 9 px on a side or for a constant image (see module docstring).
    """
    resized = resized_for_hashes(lumas)
    if resized is None:
        return [None] * len(lumas), [None] * len(lumas)
    return hashes_of_resized(*resized)


def compute_phash(luma: np.ndarray) -> int | None:
    """64-bit DCT perceptual hash of one ``(H, W)`` uint8 luma image (see module docstring)."""
    return compute_batch_hashes(luma[None])[0][0]


def compute_dhash(luma: np.ndarray) -> int | None:
    """64-bit horizontal-gradient hash of one ``(H, W)`` uint8 luma image."""
    return compute_batch_hashes(luma[None])[1][0]


def hamming_distance(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Number of differing bits between uint64 hashes (vectorised)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)
