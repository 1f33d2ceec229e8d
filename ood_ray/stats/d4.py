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

from ood_ray.stats.hashes import as_optional, dhash_values, phash_values, resized_for_hashes, thumbnails_of_resized

#: The ``dhash`` of the image turned as ``phash_d4`` turned it (``T_orient x``): the second hash that
#: checks ``phash_d4`` links (two D4 copies turned to one canonical orientation have close dhashes;
#: two different textures that phash_d4 sees alike mostly do not).
PHASH_D4_CHECK = "phash_d4_dhash"

#: The 16 x 16 grayscale picture of the image (:func:`ood_ray.stats.hashes.thumbnails_of_resized`),
#: from the phash resize this module makes anyway.
THUMBNAIL_COLUMN = "gray16"

#: The columns :func:`compute_batch_all_hashes` fills (its third value), in this order.
D4_COLUMNS = ("phash_d4", "phash_d4_orient", "dhash_d4", "dhash_d4_orient", PHASH_D4_CHECK, THUMBNAIL_COLUMN)

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


#: The D4 hash columns by kind.
D4_METHODS = ("phash_d4", "dhash_d4")


def d4_methods(near_methods: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The D4 hashes among ``dedup.near_methods`` (what the scan computes, what the dedup reads)."""
    return tuple(m for m in near_methods if m in D4_METHODS)


def _eight(upright: np.ndarray, turned: np.ndarray) -> np.ndarray:
    """The hashes' resizes of the 8 transforms of every image, ``(8 N, ...)`` transform-major,
    from two resizes per image instead of eight: Pillow's Lanczos resize to a square commutes
    exactly with mirroring an axis (tested), so the resize of ``T_{2r+f} x`` is
    ``fliplr^f rot180^(r // 2)`` of the resize of ``x`` (``r`` even) or of ``rot90 x`` (``r`` odd).
    Turning by 90 degrees swaps which axis Pillow resamples first, which changes the rounding:
    that one needs its own resize."""
    resized = []
    for index in range(TRANSFORMS):
        r, f = divmod(index, 2)
        base = upright if r % 2 == 0 else turned
        out = np.rot90(base, 2, axes=(1, 2)) if r >= 2 else base
        resized.append(np.flip(out, axis=2) if f else out)
    return np.ascontiguousarray(np.concatenate(resized))


def compute_batch_all_hashes(lumas: np.ndarray, d4: tuple[str, ...] = D4_METHODS
                             ) -> tuple[list[int | None], list[int | None], dict[str, list[int | None]]]:
    """``(phash, dhash, {phash_d4, phash_d4_orient, dhash_d4, dhash_d4_orient, phash_d4_dhash,
    gray16})`` of ``N`` same-shape
    uint8 luma images ``(N, H, W)``; only the D4 hashes named in ``d4`` are computed (the others
    are ``None``). The plain hash is the D4 family's transform 0 (the identity), so one pass gives
    both: per kind one more Lanczos resize per image (of the turned image) and one DCT batch of 8 N."""
    n = len(lumas)
    out = {name: [None] * n for name in D4_COLUMNS}
    upright = resized_for_hashes(lumas)
    if upright is None:
        return [None] * n, [None] * n, out
    # phash_d4's check hash is the dhash of the image turned as phash_d4 turned it: all 8 dhashes
    eight_of = {kind for kind in ("phash", "dhash") if f"{kind}_d4" in d4} | ({"dhash"} if "phash_d4" in d4 else set())
    wanted = tuple(kind for kind in ("phash", "dhash") if kind in eight_of)
    turned = resized_for_hashes(np.ascontiguousarray(np.rot90(lumas, 1, axes=(1, 2))), wanted) if wanted else (None, None)
    plain: list[list[int | None]] = []
    orient_of: dict[str, np.ndarray] = {}
    for kind, values_of, straight, turn in (("phash", phash_values, upright[0], turned[0]),
                                            ("dhash", dhash_values, upright[1], turned[1])):
        if kind not in eight_of:
            values, constant = values_of(straight)
            plain.append(as_optional(values, constant))
            if kind == "phash":
                out[THUMBNAIL_COLUMN] = thumbnails_of_resized(straight, constant)
            continue
        values, constant = values_of(_eight(straight, turn))
        constant = constant[:n]  # a constant image is constant in every transform
        values = values.reshape(TRANSFORMS, n)
        plain.append(as_optional(values[0], constant))
        if kind == "phash":
            out[THUMBNAIL_COLUMN] = thumbnails_of_resized(straight, constant)
        orient_of[kind] = values.argmin(axis=0)
        if f"{kind}_d4" in d4:
            orient = orient_of[kind]
            out[f"{kind}_d4"] = as_optional(values[orient, np.arange(n)], constant)
            out[f"{kind}_d4_orient"] = as_optional(orient.astype(np.uint64), constant)
        if kind == "dhash" and "phash" in orient_of:
            out[PHASH_D4_CHECK] = as_optional(values[orient_of["phash"], np.arange(n)], constant)
    return plain[0], plain[1], out


def compute_batch_d4_hashes(lumas: np.ndarray) -> tuple[list[int | None], list[int | None], list[int | None], list[int | None]]:
    """``(phash_d4, phash_d4_orient, dhash_d4, dhash_d4_orient)`` of ``N`` same-shape uint8 luma
    images ``(N, H, W)``: the smallest hash of the 8 transforms and the first transform giving it."""
    d4 = compute_batch_all_hashes(lumas)[2]
    return tuple(d4[name] for name in ("phash_d4", "phash_d4_orient", "dhash_d4", "dhash_d4_orient"))  # type: ignore[return-value]
