"""Crop-tolerant near duplicates: the centre hashes of ``phash_crop`` and how the dedup joins them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from ood_ray.config import ConfigError, load_config
from ood_ray.dedup.hash_groups import crop_distance_matrix, crop_links, run_dedup
from ood_ray.parts import LocalParts
from ood_ray.stats.centre import centre_box, compute_batch_centre_hashes
from ood_ray.stats.hashes import compute_luma
from ood_ray.stats.image import compute_images_stats

SCALES = (0.94, 0.88, 0.82)


def picture(seed: int, height: int = 48, width: int = 48) -> np.ndarray:
    """A smooth random colour picture (blurred noise): structure at several scales, like a photo."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3))
    smooth = gaussian_filter(noise, sigma=(3, 3, 0)) + 0.5 * gaussian_filter(noise, sigma=(1, 1, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(48, 48), (200, 300), (31, 40)])
def test_a_centre_hash_is_the_phash_of_the_centre_cropped_with_pillow(shape):
    image = picture(1, *shape)
    centres = compute_images_stats([image], [8], crop_scales=SCALES).d4["phash_crop"][0]
    assert len(centres) == len(SCALES)
    for scale, value in zip(SCALES, centres):
        top, left, bottom, right = centre_box(*shape, scale)
        assert (top, left) == (round(shape[0] * (1 - scale) / 2), round(shape[1] * (1 - scale) / 2))
        crop = np.asarray(Image.fromarray(image).crop((left, top, right, bottom)))
        assert value == compute_images_stats([crop], [8]).phash[0]


def test_images_too_small_or_flat_for_a_centre_have_no_centre_hash():
    # 9 x 9: the 0.94 centre removes nothing, the others leave 7 px (a phash needs 9)
    assert compute_batch_centre_hashes(compute_luma(picture(2, 9, 9))[None], SCALES) == [None]
    # 12 x 12: 0.94 removes nothing (no hash), 0.88 and 0.82 cut one pixel a side
    small = compute_batch_centre_hashes(compute_luma(picture(2, 12, 12))[None], SCALES)[0]
    assert small[0] is None and small[1] is not None and small[1] == small[2]
    flat = np.full((1, 40, 40), 128, np.uint8)
    assert compute_batch_centre_hashes(flat, SCALES) == [None]
    # no scales asked: nothing computed
    assert compute_images_stats([picture(3)], [8]).d4["phash_crop"] == [None]


def _members(full: list[int], centres: list[list[int] | None]) -> pa.Table:
    n = len(full)
    return pa.table({"image_id": [f"id{i}" for i in range(n)], "h": pa.array(full, pa.uint64()),
                     "centre": pa.array(centres, pa.list_(pa.uint64()))})


def test_crop_links_join_a_full_hash_to_another_images_centre_only():
    a, b_centre = 0x0F0F_0000_FFFF_1234, 0x0F0F_0000_FFFF_1234 ^ 0b101  # 2 bits apart
    members = _members(
        [a, 0xFFFF_FFFF_0000_0000, 0x1234_5678_9ABC_DEF0, a ^ 0b1],
        [None, [0x1111, b_centre], [0x1110], None])  # image 2's centre is near image 1's centre only
    values = sorted({a, 0xFFFF_FFFF_0000_0000, 0x1234_5678_9ABC_DEF0, a ^ 1, 0x1111, b_centre, 0x1110})
    h1, h2, d = [], [], []
    for i, x in enumerate(values):  # every value pair within 4 bits, as the join gives them
        for y in values[i + 1:]:
            if (x ^ y).bit_count() <= 4:
                h1.append(x), h2.append(y), d.append((x ^ y).bit_count())
    f1, f2, dist = crop_links(members, np.array(h1, np.uint64), np.array(h2, np.uint64), np.array(d, np.int64), 4)
    pairs = {(int(x), int(y)): int(z) for x, y, z in zip(f1, f2, dist)}
    # image 0 (full a) and image 3 (full a^1) are each a crop of image 1; image 2 links to nobody
    # (centre to centre), and 0 with 3 is phash's pair (full hashes 1 bit apart), not a crop pair
    full1 = 0xFFFF_FFFF_0000_0000
    assert pairs == {(min(a, full1), max(a, full1)): 2, (min(a ^ 1, full1), max(a ^ 1, full1)): 1}
    # the cut's distance: the smallest of full-full, full-centre and centre-full
    matrix = crop_distance_matrix(members.column("h").to_numpy().astype(np.uint64),
                                  np.array([[0, 0], [0x1111, b_centre], [0x1110, 0], [0, 0]], np.uint64),
                                  np.array([[False, False], [True, True], [True, False], [False, False]]))(np.arange(4))
    assert matrix[0, 1] == matrix[1, 0] == 2 and matrix[0, 3] == 1
    full2 = 0x1234_5678_9ABC_DEF0
    assert matrix[1, 2] == min((full1 ^ full2).bit_count(), (full1 ^ 0x1110).bit_count(), (full2 ^ 0x1111).bit_count(),
                               (full2 ^ b_centre).bit_count())
    assert matrix[0, 2] == min((a ^ 0x1234_5678_9ABC_DEF0).bit_count(), (a ^ 0x1110).bit_count())


def _scan_table(images: dict[str, np.ndarray]) -> pa.Table:
    stats = compute_images_stats(list(images.values()), [8] * len(images), crop_scales=SCALES)
    n = len(images)
    return pa.table({"image_id": [f"id{i:05d}" for i in range(n)], "status": ["ok"] * n,
                     "phash": pa.array(stats.phash, pa.uint64()), "dhash": pa.array(stats.dhash, pa.uint64()),
                     "phash_crop": pa.array(stats.d4["phash_crop"], pa.list_(pa.uint64())),
                     "hash_pixels": stats.hash_pixels, "mean": stats.image["mean"], "std": stats.image["std"]})


def test_centred_crops_are_found_by_phash_crop_and_missed_by_the_plain_hashes():
    """A 64-px picture, its crops cutting 5% and 8% off each side (the second resized back to
    64 px) and two other pictures: the plain hashes miss both crops, ``phash_crop`` groups them with
    the original and records the pairs as ``centre_crop``, and links neither other picture."""
    original = picture(10, 64, 64)
    crop5 = np.asarray(Image.fromarray(original).crop((3, 3, 61, 61)))
    crop8 = np.asarray(Image.fromarray(original).crop((5, 5, 59, 59)).resize((64, 64), Image.Resampling.BICUBIC))
    images = {"original": original, "crop5": crop5, "crop8": crop8, "other": picture(11, 64, 64),
              "another": picture(12, 64, 64)}
    names = list(images)
    table = _scan_table(images)
    full = table.column("phash").to_pylist()
    assert min((full[0] ^ full[i]).bit_count() for i in (1, 2)) > 4  # the plain hash moved too far

    def groups(methods):
        config = load_config(None, [f"dedup.near_methods=[{methods}]"], source="s", out="o").dedup
        duplicates, pairs, summary = run_dedup(LocalParts([table.slice(0, 2), table.slice(2)]), config)
        found: dict[str, set[str]] = {}
        for row in duplicates.to_pylist():
            found.setdefault(row["group_id"], set()).add(names[int(row["image_id"][2:])])
        return sorted(found.values(), key=len), pairs

    plain, _ = groups("phash, dhash")
    assert plain == []
    cropped, pairs = groups("phash, dhash, phash_crop")
    assert cropped == [{"original", "crop5", "crop8"}]
    rows = [r for r in pairs.to_pylist() if r["method"] == "phash_crop"]
    assert rows and all(r["transform"] == "centre_crop" and r["distance"] <= 4 for r in rows)
    linked = {frozenset(names[int(i[2:])] for i in (r["image_id"], r["other_id"])) for r in rows}
    # (crop8 is also a crop of crop5: 58 px less ~2 px a side is crop8's region)
    assert {frozenset({"original", "crop5"}), frozenset({"original", "crop8"})} <= linked
    assert linked <= {frozenset({"original", "crop5"}), frozenset({"original", "crop8"}), frozenset({"crop5", "crop8"})}


def test_crop_scales_are_validated_with_the_key():
    with pytest.raises(ConfigError, match=r"dedup.crop_scales=\[0.94, 1.2\]"):
        load_config(None, ["dedup.crop_scales=[0.94, 1.2]"], source="s", out="o")
    with pytest.raises(ConfigError, match="dedup.crop_scales"):
        load_config(None, ["dedup.crop_scales=[]"], source="s", out="o")
    assert load_config(None, ["dedup.crop_scales=[0.9]"], source="s", out="o").dedup.crop_scales == [0.9]
