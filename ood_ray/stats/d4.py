"""Flip- and rotation-invariant perceptual hashes: ``phash_d4`` and ``dhash_d4`` (DataEval's
``HASH_PHASH_D4`` / ``HASH_DHASH_D4``, bit-identical).

The dihedral group D4 of the square has 8 elements: the 4 rotations by 90 degrees, each with or
without a horizontal flip. For an image ``x`` its D4 hash is the smallest of the 8 hashes
``h(T x)``, ``T`` in DataEval's order ``T_{2r+f} = fliplr^f . rot90^r`` (``np.rot90``: counter-
clockwise; ``r`` in 0..3, ``f`` in 0..1). Because D4 is a group, the 8 images ``T x`` of a flipped
or rotated copy ``g x`` are the same 8 images, so ``x`` and ``g x`` have the same D4 hash (up to
resampling, exact for the hashes' square Lanczos resize of a square image). ``h`` is the plain
``phash`` / ``dhash`` of :mod:`ood_ray.stats.hashes` on the transformed luma (the same resize and
DCT, so the hashes equal DataEval's to the bit; ``None`` for a constant or too small image).

The index of the minimising transform is kept (``phash_d4_orient``, ``dhash_d4_orient``): when two
images ``a``, ``b`` share a D4 hash, ``T_a a ~ T_b b``, so ``b ~ T_b^-1 T_a a`` and
:func:`relation` names the transform that turns ``a`` into ``b`` (``identity``, ``rot90``,
``rot180``, ``rot270``, ``flip_h``, ``flip_v``, ``transpose``, ``transverse``). An image with a
symmetry has several minimising transforms; the first is kept and the relation is one of the
equivalent ones.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ood_ray.stats.hashes import hashes_of_resized, resized_for_hashes

#: The columns :func:`compute_batch_d4_hashes` fills, in its order.
D4_COLUMNS = ("phash_d4", "phash_d4_orient", "dhash_d4", "dhash_d4_orient")

#: The 8 transforms in DataEval's order, on ``(..., H, W)`` arrays.
TRANSFORMS = 8

#: Names of the D4 elements by what they do to an image (``flip_h``: mirror left-right).
NAMES = ("identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "transverse")


def transform(images: np.ndarray, index: int) -> np.ndarray:
    """``T_index`` of ``(..., H, W)`` images: ``rot90`` ``index // 2`` times, then a left-right flip
    when ``index`` is odd (DataEval's ``_get_d4_transforms``)."""
    out = np.rot90(images, index // 2, axes=(-2, -1))
    return np.flip(out, axis=-1) if index % 2 else out


def _inverse(images: np.ndarray, index: int) -> np.ndarray:
    out = np.flip(images, axis=-1) if index % 2 else images
    return np.rot90(out, -(index // 2), axes=(-2, -1))


def _named(images: np.ndarray) -> dict[str, np.ndarray]:
    return {"identity": images, "rot90": np.rot90(images, 1), "rot180": np.rot90(images, 2), "rot270": np.rot90(images, 3),
            "flip_h": np.fliplr(images), "flip_v": np.flipud(images), "transpose": images.T,
            "transverse": np.rot90(images, 2).T}


@lru_cache(maxsize=None)
def relation(orient_a: int, orient_b: int) -> str:
    """The name of ``T_b^-1 T_a``: what turns image ``a`` into image ``b`` when their D4 hashes
    came from transforms ``orient_a`` and ``orient_b``."""
    probe = np.arange(6).reshape(2, 3)  # no symmetry: every D4 element gives another array
    moved = _inverse(transform(probe, orient_a), orient_b)
    for name, candidate in _named(probe).items():
        if candidate.shape == moved.shape and np.array_equal(candidate, moved):
            return name
    raise AssertionError("D4 is closed under composition")


def _transformed_resizes(lumas: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The hashes' resizes of the 8 transforms of every image, ``(8 N, s, s)`` and ``(8 N, 9, 9)``
    (transform-major), from two resizes per image instead of eight: Pillow's Lanczos resize to a
    square commutes exactly with mirroring an axis (tested), so the resize of ``T_{2r+f} x`` is
    ``fliplr^f rot180^(r // 2)`` of the resize of ``x`` (``r`` even) or of ``rot90 x`` (``r`` odd).
    Turning by 90 degrees swaps which axis Pillow resamples first, which changes the rounding:
    that one needs its own resize."""
    upright = resized_for_hashes(lumas)
    if upright is None:
        return None
    turned = resized_for_hashes(np.ascontiguousarray(np.rot90(lumas, 1, axes=(1, 2))))
    stacks = []
    for which in range(2):
        resized = []
        for index in range(TRANSFORMS):
            r, f = divmod(index, 2)
            base = (upright if r % 2 == 0 else turned)[which]
            out = np.rot90(base, 2, axes=(1, 2)) if r >= 2 else base
            resized.append(np.flip(out, axis=2) if f else out)
        stacks.append(np.ascontiguousarray(np.concatenate(resized)))
    return stacks[0], stacks[1]


def compute_batch_d4_hashes(lumas: np.ndarray) -> tuple[list[int | None], list[int | None], list[int | None], list[int | None]]:
    """``(phash_d4, phash_d4_orient, dhash_d4, dhash_d4_orient)`` of ``N`` same-shape uint8 luma
    images ``(N, H, W)``: the smallest hash of the 8 transforms and the first transform giving it."""
    n = len(lumas)
    resized = _transformed_resizes(lumas)
    if resized is None:
        return [None] * n, [None] * n, [None] * n, [None] * n
    phashes, dhashes = hashes_of_resized(*resized)
    out: list[list[int | None]] = []
    for hashes in (phashes, dhashes):
        valid = np.array([v is not None for v in hashes[:n]], bool)  # constant: constant in every transform
        values = np.array([v or 0 for v in hashes], np.uint64).reshape(TRANSFORMS, n)
        orient = values.argmin(axis=0)
        best = values[orient, np.arange(n)]
        out.append([int(b) if ok else None for b, ok in zip(best, valid)])
        out.append([int(o) if ok else None for o, ok in zip(orient, valid)])
    return out[0], out[1], out[2], out[3]
