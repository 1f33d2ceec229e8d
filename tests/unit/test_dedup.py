"""Duplicate groups: band masks (pigeonhole), near pairs against brute force, bucket guard, groups."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ood_ray.config import load_config
from ood_ray.dedup.components import compute_components
from ood_ray.dedup.hash_groups import band_masks, key_orders, run_dedup, shuffle_hashes
from ood_ray.dedup.hash_groups import find_near_pairs as near_pairs
from ood_ray.parts import LocalParts


def dedup_config(*overrides: str):
    return load_config(None, list(overrides), source="s", out="o").dedup


def named_groups(table: pa.Table, names: list[str], *overrides: str, channels: pa.Table | None = None) -> list[set[str]]:
    """The near groups ``run_dedup`` finds with ``phash`` over ``table`` (ids ``id00000``, ...), as sets
    of the images' names, smallest first."""
    duplicates, _, _ = run_dedup(LocalParts([table]), dedup_config("dedup.near_methods=phash", *overrides),
                                 channel_parts=LocalParts([channels]) if channels is not None else None)
    found: dict[str, set[str]] = {}
    for row in duplicates.to_pylist():
        found.setdefault(row["group_id"], set()).add(names[int(row["image_id"][2:])])
    return sorted(found.values(), key=len)


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(0, 2**64 - 1),
    flips=st.lists(st.integers(0, 63), max_size=6, unique=True),
    distance=st.integers(0, 6),
    extra=st.integers(1, 4),
)
def test_hashes_within_distance_share_a_masked_key(h, flips, distance, extra):
    """Pigeonhole: <= d differing bits leave at least bands - d bands equal."""
    other = h
    for bit in flips[:distance]:
        other ^= 1 << bit
    masks = band_masks(distance + extra, distance)
    assert any((h & m) == (other & m) for m in masks)


def test_band_masks_cover_64_bits():
    masks = band_masks(6, 4)
    assert len(masks) == 15  # C(6, 2)
    union = 0
    for m in masks:
        union |= m
    assert union == 2**64 - 1


@settings(max_examples=100, deadline=None)
@given(hashes=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40), distance=st.integers(0, 5),
       extra=st.integers(1, 3))
def test_key_first_permutation_is_a_bijection_that_sorts_by_key(hashes, distance, extra):
    values = np.array(hashes, np.uint64)
    bands = distance + extra
    for order, mask in zip(key_orders(bands, distance), band_masks(bands, distance)):
        assert int(order.mask) == mask
        permuted = order.forward(values)
        assert np.array_equal(order.backward(permuted), values)
        # Hamming distances are kept, and the top key_bits are exactly the masked bits
        assert np.array_equal(np.bitwise_count(permuted[:, None] ^ permuted[None, :]),
                              np.bitwise_count(values[:, None] ^ values[None, :]))
        same_key = (values[:, None] & np.uint64(mask)) == (values[None, :] & np.uint64(mask))
        keys = order.bucket(permuted)
        assert np.array_equal(keys[:, None] == keys[None, :], same_key)
        # sorting the permuted values sorts by key first
        ordered = np.sort(permuted)
        assert np.all(np.diff(order.bucket(ordered).astype(np.float64)) >= 0)


def _con(hashes: np.ndarray, pixel_hashes: list[str] | None = None, splits: list[str] | None = None,
         parts: int = 3) -> LocalParts:
    """The rows as ``parts`` in-memory part files (shuffled, random sizes), as a run writes them."""
    n = len(hashes)
    table = pa.table({
        "image_id": [f"id{i:05d}" for i in range(n)],
        "status": ["ok"] * n,
        "phash": pa.array(hashes, pa.uint64()),
        "dhash": pa.array(hashes, pa.uint64()),
        "hash_pixels": pixel_hashes or [f"{i:032x}" for i in range(n)],
        "split": splits or ["train"] * n,
    })
    rng = np.random.default_rng(n)
    table = table.take(rng.permutation(n))
    cuts = sorted(rng.integers(0, n + 1, parts - 1).tolist())
    return LocalParts([table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, n])])


def find_near_pairs(parts: LocalParts, method: str, config, rows: int | None = None):
    return near_pairs(shuffle_hashes(parts, config, rows or 10**6), method)


def brute_force_pairs(hashes: np.ndarray, distance: int) -> set[tuple[int, int]]:
    distinct = np.unique(hashes)
    xor = np.bitwise_xor(distinct[:, None], distinct[None, :])
    d = np.bitwise_count(xor)
    i, j = np.nonzero(np.triu(d <= distance, k=1))
    return {(int(distinct[a]), int(distinct[b])) for a, b in zip(i, j)}


@pytest.mark.parametrize("distance,bands", [(4, None), (4, 5), (2, 8), (0, None)])
def test_near_pairs_equal_brute_force(distance, bands):
    rng = np.random.default_rng(distance)
    base = rng.integers(0, 2**63, size=600, dtype=np.uint64)
    planted = base[:200].copy()
    for k in range(200):  # near copies with 0..6 flipped bits
        for bit in rng.choice(64, size=k % 7, replace=False):
            planted[k] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.concatenate([base, planted])
    overrides = [f"dedup.near_distance={distance}"] + ([f"dedup.bands={bands}"] if bands else [])
    h1, h2, d, skipped = find_near_pairs(_con(hashes), "phash", dedup_config(*overrides))
    assert not skipped
    assert set(zip(h1.tolist(), h2.tolist())) == brute_force_pairs(hashes, distance)
    assert np.all(d <= distance)


@pytest.mark.parametrize("partitions,parts", [(1, 1), (3, 5), (16, 2)])
def test_shuffle_gives_the_same_groups_for_any_partitions_and_parts(partitions, parts):
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    near = base[:150] ^ (np.uint64(1) << rng.integers(0, 64, 150).astype(np.uint64))
    hashes = np.concatenate([base, near, base[:20]])
    pixels = [f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}{i:016x}" for i in [*range(550), *range(20)]]  # 20 exact copies
    config = dedup_config(f"dedup.partitions={partitions}", "dedup.near_methods=phash")
    duplicates, _, summary = run_dedup(_con(hashes, pixels, parts=parts), config)
    reference, _, _ = run_dedup(_con(hashes, pixels, parts=1), dedup_config("dedup.partitions=1", "dedup.near_methods=phash"))
    assert duplicates.equals(reference)
    assert summary["partitions"] == partitions
    assert summary["groups"] == {"exact/pixel": 20, "near/phash": 150}


def test_huge_buckets_are_skipped_and_reported():
    # 300 distinct hashes that share their high 48 bits: every band key but one is the same.
    hashes = (np.uint64(0xABCDEF0123450000) + np.arange(300, dtype=np.uint64))
    h1, _, _, skipped = find_near_pairs(_con(hashes), "phash", dedup_config("dedup.max_bucket=100", "dedup.near_distance=2"))
    assert skipped and all(s["distinct_hashes"] > 100 for s in skipped)
    assert len(h1) < len(brute_force_pairs(hashes, 2))


def test_identical_hashes_are_one_value_not_a_pair_explosion():
    hashes = np.concatenate([np.full(5000, 12345, np.uint64), np.array([12345 ^ 1, 99], np.uint64)])
    con = _con(hashes)
    h1, h2, _, _ = find_near_pairs(con, "phash", dedup_config())
    assert list(zip(h1.tolist(), h2.tolist())) == [(12344, 12345)]
    duplicates, _, summary = run_dedup(con, dedup_config("dedup.near_methods=phash"))
    near = duplicates.filter(pa.compute.equal(duplicates.column("kind"), "near"))
    assert near.num_rows == 5001 and set(near.column("group_size").to_pylist()) == {5001}


def test_a_chain_is_cut_into_groups_no_wider_than_the_distance():
    a = 0b0
    hashes = np.array([a, a ^ 0b1, a ^ 0b11, 0xFFFF_0000_0000_0000], np.uint64)  # 0-1-2 chain, 3 apart
    con = _con(hashes)
    duplicates, pairs, summary = run_dedup(con, dedup_config("dedup.near_distance=1", "dedup.near_methods=phash"))
    rows = duplicates.to_pylist()
    # union-find would join 0, 1 and 2 (0 and 2 are 2 bits apart): complete linkage keeps one pair
    assert len(rows) == 2 and "id00001" in {r["image_id"] for r in rows} and len({r["group_id"] for r in rows}) == 1
    assert all(r["distance"] == 1.0 and r["group_size"] == 2 for r in rows)
    assert summary["groups"] == {"near/phash": 1}
    assert pairs.num_rows == 1 and pairs.column("method").to_pylist() == ["phash"]
    assert pairs.column("distance").to_pylist() == [1.0]
    assert {pairs.column("image_id")[0].as_py(), pairs.column("other_id")[0].as_py()} == {r["image_id"] for r in rows}
    # with the wider threshold the three are one group again
    duplicates, _, _ = run_dedup(con, dedup_config("dedup.near_distance=2", "dedup.near_methods=phash"))
    assert set(duplicates.column("image_id").to_pylist()) == {"id00000", "id00001", "id00002"}


def test_textures_that_chain_are_cut_and_every_group_is_tight():
    rng = np.random.default_rng(3)
    walk = [np.uint64(rng.integers(0, 2**63))]
    for _ in range(60):  # a random walk of 3-bit steps: every neighbour within 4, the ends far apart
        step = np.uint64(0)
        for bit in rng.choice(64, 3, replace=False):
            step |= np.uint64(1) << np.uint64(bit)
        walk.append(walk[-1] ^ step)
    hashes = np.array(walk, np.uint64)
    duplicates, pairs, _ = run_dedup(_con(hashes), dedup_config("dedup.near_distance=4", "dedup.near_methods=phash"))
    by_group: dict[str, list[int]] = {}
    for row in duplicates.to_pylist():
        by_group.setdefault(row["group_id"], []).append(int(row["image_id"][2:]))
    assert len(by_group) > 1
    for members in by_group.values():
        values = hashes[members]
        assert np.bitwise_count(values[:, None] ^ values[None, :]).max() <= 4
    assert pairs.num_rows and max(pairs.column("distance").to_pylist()) <= 4


def test_exact_groups_by_pixels_and_pixel_identical_near_groups_are_not_repeated():
    hashes = np.array([10, 10, 10, 0xFFFF_FFFF_0000_0000], np.uint64)
    con = _con(hashes, pixel_hashes=["p", "p", "q", "r"])
    duplicates, _, summary = run_dedup(con, dedup_config("dedup.near_methods=phash"))
    exact = [r for r in duplicates.to_pylist() if r["kind"] == "exact"]
    assert {r["image_id"] for r in exact} == {"id00000", "id00001"}
    near = [r for r in duplicates.to_pylist() if r["kind"] == "near"]
    assert {r["image_id"] for r in near} == {"id00000", "id00001", "id00002"}
    # Two pixel-identical images alone are only an exact group.
    con = _con(np.array([10, 10], np.uint64), pixel_hashes=["p", "p"])
    assert run_dedup(con, dedup_config())[2]["groups"] == {"exact/pixel": 1}


def test_components_partition():
    labels = compute_components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5] != labels[0]
    assert len(set(labels.tolist())) == 3
    assert compute_components(0, np.array([]), np.array([])).size == 0


def _checkerboard(light: int, dark: int, cell: int = 8, size: int = 64, colour=(1.0, 1.0, 1.0)) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    grey = np.where(((y // cell) + (x // cell)) % 2 == 0, light, dark).astype(np.float64)
    return np.clip(grey[..., None] * np.asarray(colour)[None, None, :], 0, 255).astype(np.uint8)


def test_the_photometric_check_splits_hash_alike_images_that_are_not_copies():
    """A light and a dark checkerboard (and one at a third of the contrast) have the same perceptual
    hashes -- the hash normalises brightness and contrast away -- but are different pictures; a
    brighter copy (+30%) of the light one is still its duplicate. Without the check all four are
    one group."""
    from ood_ray.stats.image import compute_images_stats

    images = {"light": _checkerboard(235, 190), "dark": _checkerboard(90, 10), "low_contrast": _checkerboard(150, 135),
              "light_brighter": np.clip(_checkerboard(235, 190).astype(np.float64) * 1.08 + 8, 0, 255).astype(np.uint8)}
    stats = compute_images_stats(list(images.values()), [8] * len(images))
    assert len(set(stats.phash)) == 1  # the hash alone cannot tell them apart
    n = len(images)
    table = pa.table({"image_id": [f"id{i:05d}" for i in range(n)], "status": ["ok"] * n,
                      "phash": pa.array(stats.phash, pa.uint64()), "hash_pixels": stats.hash_pixels,
                      "mean": stats.image["mean"], "std": stats.image["std"]})
    names = list(images)
    assert named_groups(table, names) == [{"light", "light_brighter"}]
    assert named_groups(table, names, "dedup.verify=false") == [set(names)]


def _stripes(colour: tuple[int, int, int], size: int = 64, period: int = 8) -> np.ndarray:
    x = np.arange(size)
    band = (x // (period // 2)) % 2 == 0
    picture = np.where(band[None, :, None], np.asarray(colour, np.float64)[None, None, :], 245.0)
    return np.broadcast_to(picture, (size, size, 3)).astype(np.uint8)


def test_the_colour_term_splits_stripes_of_other_colours_and_keeps_gray_and_brighter_copies():
    """Red and teal stripes of one luma on white hash alike and have the same mean and contrast:
    only their colour balance tells them apart. A +30% brighter copy of the red stripes keeps its
    balance, and a grayscale copy has none to compare: both stay in the red stripes' group. The
    shares come from the ``channels`` parts, for the members only."""
    from ood_ray.lint.issues import absolute_scores
    from ood_ray.stats.image import compute_images_stats

    red = _stripes((200, 100, 100))
    images = {"red": red, "teal": _stripes((40, 150, 140)),
              "red_brighter": np.clip(red.astype(np.float64) * 1.3, 0, 255).astype(np.uint8),
              "red_gray": np.repeat(np.asarray(Image.fromarray(red).convert("L"))[..., None], 3, axis=2)}
    stats = compute_images_stats(list(images.values()), [8] * len(images))
    names, n = list(images), len(images)
    assert len(set(stats.phash)) <= 2 and max(bin(a ^ stats.phash[0]).count("1") for a in stats.phash) <= 4
    ids = [f"id{i:05d}" for i in range(n)]
    table = pa.table({"image_id": ids, "status": ["ok"] * n, "phash": pa.array(stats.phash, pa.uint64()),
                      "hash_pixels": stats.hash_pixels, "mean": stats.image["mean"], "std": stats.image["std"],
                      "score_grayscale": absolute_scores({**stats.quality, "width": stats.image["width"],
                                                          "height": stats.image["height"]})["grayscale"]})
    channels = pa.table({"image_id": [i for i in ids for _ in range(3)], "band": ["R", "G", "B"] * n,
                         "mean": [float(v) for x in images.values() for v in x.reshape(-1, 3).mean(axis=0) / 255]})

    assert named_groups(table, names, channels=channels) == [{"red", "red_brighter", "red_gray"}]
    # without the colour term (or without the channels to read it from) the teal stripes join
    assert named_groups(table, names, "dedup.verify_colour_difference=null", channels=channels) == [set(names)]
    assert named_groups(table, names) == [set(names)]


def test_a_group_holds_no_two_members_that_disagree_even_when_a_third_links_them():
    """A purple and a blue texture whose hashes are 2 bits apart, both linked to a gray one between
    them (a gray image is not judged by colour): each link passes the check, but the purple and the
    blue picture disagree, so the cut must not leave them in one group."""
    from ood_ray.dedup.hash_groups import PhotometricCheck, find_near_groups

    base = 0x0F0F_F0F0_3C3C_C3C3
    members = pa.table({"image_id": ["purple", "gray", "blue"], "h": pa.array([base, base ^ 1, base ^ 3], pa.uint64()),
                        "hash_pixels": ["p", "g", "b"], "orient": pa.nulls(3, pa.int8()),
                        "mean": [0.4, 0.4, 0.4], "std": [0.1, 0.1, 0.1], "score_grayscale": [0.0, 1.0, 0.0],
                        "red_share": [0.39, 1 / 3, 0.18], "blue_share": [0.36, 1 / 3, 0.49]})
    h1 = np.array([base, base, base ^ 1], np.uint64)
    h2 = np.array([base ^ 1, base ^ 3, base ^ 3], np.uint64)
    dist = np.array([1, 2, 1], np.int64)
    check = PhotometricCheck()
    groups, pairs = find_near_groups(members, "phash", h1, h2, dist, 4, 2000, check)
    by_group: dict[str, set[str]] = {}
    for row in groups.to_pylist():
        by_group.setdefault(row["group_id"], set()).add(row["image_id"])
    assert not any({"purple", "blue"} <= group for group in by_group.values())
    assert len(by_group) == 1 and next(iter(by_group.values())) in ({"purple", "gray"}, {"gray", "blue"})
    # every pair left in a group agrees
    assert all({r["image_id"], r["other_id"]} != {"purple", "blue"} for r in pairs.to_pylist())
    # without the check all three are one group (each within 4 bits of the others)
    unchecked, _ = find_near_groups(members, "phash", h1, h2, dist, 4, 2000, None)
    assert set(unchecked.column("image_id").to_pylist()) == {"purple", "gray", "blue"}
    assert len(set(unchecked.column("group_id").to_pylist())) == 1


def _vertical_stripes(period: float, phase: float, size: int = 32) -> np.ndarray:
    x = np.arange(size, dtype=np.float64)
    row = 128 + 100 * np.sign(np.sin(2 * np.pi * x / period + phase))
    return np.broadcast_to(row[None, :, None], (size, size, 3)).astype(np.uint8)


def test_the_second_hash_splits_stripes_one_hash_sees_alike_and_keeps_a_reencoded_copy():
    """Vertical stripes of period 3 and of period 3.5 have the same ``phash`` (its 8 x 8 DCT block sees
    neither frequency) and the same mean and contrast, so neither the hash nor the photometric check
    tells them apart; their ``dhash`` (signs of horizontal gradients) differ in ~48 of 64 bits. A
    JPEG copy of the period-3 stripes stays within a few bits in both hashes and keeps its group."""
    import io

    from ood_ray.stats.image import compute_images_stats

    fine = _vertical_stripes(3, 0)
    buffer = io.BytesIO()
    Image.fromarray(fine).save(buffer, format="JPEG", quality=90)
    images = {"fine": fine, "fine_jpeg": np.asarray(Image.open(buffer).convert("RGB")), "wider": _vertical_stripes(3.5, 1.5)}
    stats = compute_images_stats(list(images.values()), [8] * len(images))
    names, n = list(images), len(images)

    def bits(a, b):
        return bin(a ^ b).count("1")

    assert bits(stats.phash[0], stats.phash[2]) <= 4 and bits(stats.dhash[0], stats.dhash[2]) > 32
    assert bits(stats.phash[0], stats.phash[1]) <= 4 and bits(stats.dhash[0], stats.dhash[1]) <= 20
    table = pa.table({"image_id": [f"id{i:05d}" for i in range(n)], "status": ["ok"] * n,
                      "phash": pa.array(stats.phash, pa.uint64()), "dhash": pa.array(stats.dhash, pa.uint64()),
                      "hash_pixels": stats.hash_pixels, "mean": stats.image["mean"], "std": stats.image["std"]})
    assert named_groups(table, names) == [{"fine", "fine_jpeg"}]
    assert named_groups(table, names, "dedup.verify_hash_distance=null") == [set(names)]
    # the bound is the second hash's Hamming distance: at 48 bits the wider stripes pass again
    assert named_groups(table, names, "dedup.verify_hash_distance=48") == [set(names)]


def _random_stripes(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Vertical bands 2-6 px wide, each of a random gray: a banded texture."""
    row: list[float] = []
    while len(row) < size:
        row += [rng.uniform(40, 220)] * int(rng.integers(2, 7))
    return np.broadcast_to(np.asarray(row[:size])[None, :, None], (size, size, 3)).astype(np.uint8)


def test_the_pixel_check_splits_banded_textures_both_hashes_see_alike_and_keeps_their_copies():
    """Random banded textures: a ``phash`` of bands has one non-zero row of DCT coefficients, so
    many different ones hash within 4 bits and their ``dhash`` within 20 -- both hashes link them.
    Most of their 16 x 16 thumbnails (``gray16``) do not correlate: the pixel check drops most of
    those links (and with them a share of the pairs their groups held), while the JPEG (quality
    50), 3/4-size and +30% brighter copies keep their originals' groups."""
    from ood_ray.dedup.hash_groups import pixel_evidence
    import io

    from ood_ray.stats.image import compute_images_stats

    rng = np.random.default_rng(0)
    originals = [_random_stripes(rng) for _ in range(40)]
    images, origin = list(originals), list(range(len(originals)))
    for k, picture in enumerate(originals[:10]):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=50)
        images += [np.asarray(Image.open(buffer).convert("RGB")), np.asarray(Image.fromarray(picture).resize((36, 36))),
                   np.clip(picture.astype(np.float64) * 1.3, 0, 255).astype(np.uint8)]
        origin += [k] * 3
    stats = compute_images_stats(images, [8] * len(images))
    n = len(images)
    table = pa.table({"image_id": [f"id{i:05d}" for i in range(n)], "status": ["ok"] * n,
                      "phash": pa.array(stats.phash, pa.uint64()), "dhash": pa.array(stats.dhash, pa.uint64()),
                      "gray16": pa.array(stats.d4["gray16"], pa.binary(256)), "hash_pixels": stats.hash_pixels,
                      "mean": stats.image["mean"], "std": stats.image["std"]})

    def pairs(groups: list[set[int]]) -> tuple[int, int]:
        """(pairs of different textures, copies in their original's group)"""
        false = sum(origin[a] != origin[b] for g in groups for a in g for b in g if a < b)
        kept = sum(any({origin[i], i} <= g for g in groups) for i in range(len(originals), n))
        return false, kept

    def bits(a: int, b: int) -> int:
        return bin(a ^ b).count("1")

    alike = [(a, b) for a in range(len(originals)) for b in range(a) if bits(stats.phash[a], stats.phash[b]) <= 4
             and bits(stats.dhash[a], stats.dhash[b]) <= 20]
    evidence = pixel_evidence(table)
    correlated = [float(evidence[a] @ evidence[b]) >= 0.5 for a, b in alike]
    assert len(alike) >= 20 and sum(correlated) <= len(alike) // 3
    checked = pairs(named_groups(table, list(range(n))))
    unchecked = pairs(named_groups(table, list(range(n)), "dedup.verify_pixel_correlation=null"))
    assert unchecked[0] >= 20  # the hashes (and the second-hash check) link many different textures
    assert checked[0] < 0.8 * unchecked[0]
    # the copies stay with their originals (a copy whose hash-alike neighbours disagree with its
    # original may be cut into their group instead, with or without the check: 0-1 of 30 here)
    assert unchecked[1] >= 28 and checked[1] >= 28


def test_the_pixel_evidence_is_a_correlation_turned_like_the_hash_and_missing_agrees():
    """``pixel_evidence`` rows are zero-mean unit vectors, so their dot product is Pearson's r:
    a picture and its negative have r = -1, a brighter, higher-contrast version r = 1; a picture
    turned by D4 transform ``T`` and recorded with ``orient = T`` lines up with the upright one
    recorded with ``orient = 0``; a missing or flat thumbnail is NaN and agrees with anything."""
    from ood_ray.dedup.hash_groups import PhotometricCheck, pixel_evidence
    from ood_ray.stats.d4 import transform

    rng = np.random.default_rng(1)
    picture = rng.integers(0, 200, (16, 16)).astype(np.uint8)
    turned = np.ascontiguousarray(transform(picture, 5))
    thumbs = [picture, 255 - picture, (picture * 1.2 + 10).astype(np.uint8), turned, None, np.full((16, 16), 7, np.uint8)]
    members = pa.table({"gray16": pa.array([None if t is None else t.tobytes() for t in thumbs], pa.binary(256)),
                        "orient": pa.array([0, 0, 0, 5, 0, 0], pa.int8())})
    evidence = pixel_evidence(members)
    r = evidence @ evidence[0]
    assert r[:4] == pytest.approx([1.0, -1.0, 1.0, 1.0], abs=2e-3)
    assert np.isnan(evidence[4:]).all()
    check = PhotometricCheck(min_pixel_correlation=0.5)
    first = np.repeat(evidence[:1], len(thumbs), axis=0)
    assert check.correlated(first, evidence).tolist() == [True, False, True, True, True, True]
    assert check.correlated_matrix(evidence, evidence)[0].tolist() == [True, False, True, True, True, True]
    # unturned, the mirrored picture no longer lines up
    upright = pixel_evidence(members.set_column(1, "orient", pa.array([0] * 6, pa.int8())))
    assert abs(float(upright[3] @ upright[0])) < 0.5


@pytest.mark.parametrize("value", [-1.5, 2, "x"])
def test_a_bad_pixel_correlation_fails_with_its_key(value):
    with pytest.raises(Exception, match="dedup.verify_pixel_correlation"):
        dedup_config(f"dedup.verify_pixel_correlation={value}")


def test_the_second_hash_check_agrees_within_the_bound_and_when_a_hash_is_missing():
    from ood_ray.dedup.hash_groups import PhotometricCheck, photometry

    base = 0xF0F0_0F0F_AAAA_5555
    members = pa.table({"mean": [0.5] * 4, "std": [0.2] * 4,
                        "second": pa.array([base, base ^ 0b111, base ^ ((1 << 64) - 1), None], pa.uint64())})
    evidence = photometry(members)
    check = PhotometricCheck(max_second_hash_distance=3)
    first = np.repeat(evidence[:1], 4, axis=0)
    assert check.agree(first, evidence).tolist() == [True, True, False, True]  # 0, 3, 64 bits, missing
    assert PhotometricCheck(max_second_hash_distance=2).agree(first, evidence).tolist() == [True, False, False, True]
    assert PhotometricCheck().agree(first, evidence).tolist() == [True] * 4


@pytest.mark.parametrize("value", [-1, 65, 2.5, True, "x"])
def test_a_bad_second_hash_bound_fails_with_its_key(value):
    with pytest.raises(ValueError, match="verify_hash_distance"):
        dedup_config(f"dedup.verify_hash_distance={value}")
