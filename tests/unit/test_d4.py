"""Flip/rotation-invariant hashes: equal to DataEval's ``phash_d4``/``dhash_d4`` to the bit, the same
for every flip and rotation of an image, and the relation between two copies named right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ood_ray.io.decode import decode_image
from ood_ray.stats.d4 import NAMES, _named, compute_batch_d4_hashes, relation, transform
from ood_ray.tables import SCAN_FIELDS

SCAN_SCHEMA = pa.schema(SCAN_FIELDS)
from ood_ray.stats.hashes import compute_batch_hashes, compute_luma

REAL = sorted((Path(__file__).resolve().parents[1] / "data" / "real").glob("*.*g"))


def _luma(path: Path) -> np.ndarray:
    return compute_luma(decode_image(path.read_bytes(), max_pixels=10**8).pixels)


def test_equal_to_dataeval_to_the_bit():
    dataeval_hash = pytest.importorskip("dataeval.core._hash")
    for path in REAL:
        pixels = decode_image(path.read_bytes(), max_pixels=10**8).pixels
        p, _, d, _ = compute_batch_d4_hashes(compute_luma(pixels)[None])
        chw = np.moveaxis(pixels, -1, 0)
        assert f"{p[0]:016x}" == dataeval_hash._phash_d4(chw)[0], path.name
        assert f"{d[0]:016x}" == dataeval_hash._dhash_d4(chw)[0], path.name


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_every_flip_and_rotation_has_the_same_hash_and_the_right_relation(path):
    luma = _luma(path)
    side = min(luma.shape)
    square = np.ascontiguousarray(luma[:side, :side])  # the hashes' resize is square: exact on a square
    p0, po0, d0, do0 = compute_batch_d4_hashes(square[None])
    plain_p, _ = compute_batch_hashes(square[None])
    assert p0[0] <= plain_p[0]  # the minimum over the 8 includes the identity
    for name, copy in _named(square).items():
        p, po, d, do = compute_batch_d4_hashes(np.ascontiguousarray(copy)[None])
        assert (p[0], d[0]) == (p0[0], d0[0]), name
        if len(set(compute_batch_hashes(np.stack([np.ascontiguousarray(transform(square, i)) for i in range(8)]))[0])) == 8:
            assert relation(po0[0], po[0]) == name  # no symmetry in the hashes: the relation is unique


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_the_check_hash_is_the_dhash_of_the_image_turned_as_phash_d4_turned_it(path):
    """``phash_d4_dhash`` = ``dhash(T_o x)`` with ``o = phash_d4_orient`` (known answer from the plain
    dhash of the turned image), and every flip and rotation of a square image gives the same value:
    the second hash that checks a ``phash_d4`` link of two turned copies compares like with like."""
    from ood_ray.stats.d4 import PHASH_D4_CHECK, compute_batch_all_hashes

    luma = _luma(path)
    side = min(luma.shape)
    square = np.ascontiguousarray(luma[:side, :side])
    _, _, d4 = compute_batch_all_hashes(square[None], ("phash_d4",))
    assert d4["dhash_d4"] == [None]  # not asked for
    orient, check = d4["phash_d4_orient"][0], d4[PHASH_D4_CHECK][0]
    assert check == compute_batch_hashes(np.ascontiguousarray(transform(square, orient))[None])[1][0]
    for name, copy in _named(square).items():
        assert compute_batch_all_hashes(np.ascontiguousarray(copy)[None], ("phash_d4",))[2][PHASH_D4_CHECK][0] == check, name


def test_relation_is_a_group_action():
    probe = np.arange(6).reshape(2, 3)
    named = _named(probe)
    assert sorted(named) == sorted(NAMES)
    for a in range(8):
        assert relation(a, a) == "identity"
        for b in range(8):
            moved = named[relation(a, b)]
            # T_b(moved) equals T_a(probe): b's canonical view of a's copy is a's canonical view
            assert np.array_equal(transform(moved, b), transform(probe, a))


def test_constant_and_tiny_images_have_no_hash():
    p, po, d, do = compute_batch_d4_hashes(np.full((2, 40, 40), 7, np.uint8))
    assert p == po == d == do == [None, None]
    assert compute_batch_d4_hashes(np.zeros((1, 8, 40), np.uint8))[0] == [None]


def test_flipped_and_rotated_copies_of_real_images_are_grouped_with_the_transform():
    """Statistics (as the scan computes them) of real images and of their flips and rotations, then
    the dedup over those rows: each copy is in its original's phash_d4 group, and the pair says
    what turns one into the other."""
    from PIL import Image

    from ood_ray.config import load_config
    from ood_ray.dedup.hash_groups import run_dedup
    from ood_ray.parts import LocalParts
    from ood_ray.stats.image import compute_images_stats

    made = {"flip_h": Image.Transpose.FLIP_LEFT_RIGHT, "rot90": Image.Transpose.ROTATE_90,
            "rot180": Image.Transpose.ROTATE_180, "flip_v": Image.Transpose.FLIP_TOP_BOTTOM}
    pixels, ids = [], []
    for k, path in enumerate(REAL):
        original = Image.open(path).convert("RGB")
        side = min(original.size)
        original = original.crop((0, 0, side, side))
        pixels.append(np.asarray(original))
        ids.append(f"{k}-identity")
        for name, how in made.items():
            pixels.append(np.asarray(original.transpose(how)))
            ids.append(f"{k}-{name}")
    stats = compute_images_stats(pixels, [8] * len(pixels))
    table = pa.table({"image_id": ids, "status": ["ok"] * len(ids), "hash_pixels": stats.hash_pixels,
                      "phash": pa.array(stats.phash, pa.uint64()), "dhash": pa.array(stats.dhash, pa.uint64()),
                      **{name: pa.array(stats.d4[name], SCAN_SCHEMA.field(name).type) for name in stats.d4}})
    config = load_config(None, ["dedup.near_methods=[phash_d4]"], source="s", out="o").dedup
    duplicates, pairs, _ = run_dedup(LocalParts([table]), config)
    groups: dict[str, set[str]] = {}
    for row in duplicates.to_pylist():
        groups.setdefault(row["group_id"], set()).add(row["image_id"])
    for k in range(len(REAL)):
        expected = {f"{k}-{name}" for name in ("identity", *made)}
        assert any(expected <= members for members in groups.values()), k
    for row in pairs.to_pylist():
        a, b = row["image_id"].split("-", 1), row["other_id"].split("-", 1)
        assert a[0] == b[0] and row["method"] == "phash_d4"
        if a[1] == "identity":
            assert row["transform"] == b[1] or row["distance"] == 0  # a symmetric image has several answers


def test_one_pass_gives_the_plain_hashes_too():
    from ood_ray.stats.d4 import compute_batch_all_hashes

    lumas = np.stack([_luma(path)[:28, :28] for path in REAL])
    phash, dhash, d4 = compute_batch_all_hashes(lumas)
    assert (phash, dhash) == compute_batch_hashes(lumas)
    assert [d4[name] for name in ("phash_d4", "phash_d4_orient", "dhash_d4", "dhash_d4_orient")] == \
        list(compute_batch_d4_hashes(lumas))


def test_only_the_asked_d4_hashes_are_computed():
    from ood_ray.stats.d4 import compute_batch_all_hashes

    lumas = np.stack([_luma(path)[:28, :28] for path in REAL])
    full = compute_batch_all_hashes(lumas)
    only_p = compute_batch_all_hashes(lumas, ("phash_d4",))
    none = compute_batch_all_hashes(lumas, ())
    assert only_p[:2] == none[:2] == full[:2]  # the plain hashes never change
    assert only_p[2]["phash_d4"] == full[2]["phash_d4"] and only_p[2]["dhash_d4"] == [None] * len(REAL)
    assert all(values == [None] * len(REAL) for name, values in none[2].items() if name != "gray16")
    # the thumbnail comes from the plain phash resize: the same whichever D4 hashes are asked for
    assert none[2]["gray16"] == only_p[2]["gray16"] == full[2]["gray16"] and all(len(t) == 256 for t in full[2]["gray16"])
