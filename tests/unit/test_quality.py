"""Named quality issues: the measurements against CleanVision's own functions, the flags against
CleanVision's ``find_issues`` on the same files, odd size from the distributed quartiles, and the
two issues of ours (grayscale, noisy) on known answers."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from ood_ray.lint.issues import ISSUES, absolute_scores, odd_size_bounds
from ood_ray.lint.linter import summarize_metrics
from ood_ray.parts import LocalParts
from ood_ray.stages.quality import add_odd_size, count_flags
from ood_ray.stats.image import compute_images_stats
from ood_ray.stats.quality import QUALITY_MEASURES, image_area_sqrt

cleanvision = pytest.importorskip("cleanvision")


def _picture(rng: np.random.Generator, width: int, height: int, smooth: float = 2.0) -> Image.Image:
    """A natural-looking picture: smooth colour fields, a few shapes, mild noise."""
    base = rng.random((max(2, height // 8), max(2, width // 8), 3))
    image = Image.fromarray((base * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image).astype(np.int16)
    y, x = np.mgrid[:height, :width]
    for _ in range(3):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, max(4, min(width, height) // 3))
        array[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    array = np.clip(array + rng.normal(0, 4, array.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(array).filter(ImageFilter.GaussianBlur(smooth * 0.3))


def _cases() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    photo = _picture(rng, 300, 200)
    return {
        "small_rgb.png": _picture(rng, 32, 32),
        "photo.jpg": photo,
        "tall.png": _picture(rng, 40, 150),
        "strip.png": _picture(rng, 200, 20),
        "blurred.png": photo.filter(ImageFilter.GaussianBlur(6)),
        "dark.png": Image.eval(_picture(rng, 64, 64), lambda v: v // 8),
        "light.png": Image.eval(_picture(rng, 64, 64), lambda v: 240 + v // 16),
        "gray_l.png": _picture(rng, 48, 48).convert("L"),
        "flat.png": Image.new("RGB", (48, 48), (90, 140, 30)),
        "rgba.png": _picture(rng, 80, 70).convert("RGBA"),
        "big_gray.jpg": _picture(rng, 500, 333).convert("L"),
        "tiny.png": _picture(rng, 2, 5),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    for name, image in _cases().items():
        image.save(root / name, quality=90) if name.endswith(".jpg") else image.save(root / name)
    return root


def _pixels(path) -> np.ndarray:
    image = Image.open(path)
    image.load()
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _measures(paths) -> dict[str, np.ndarray]:
    arrays = [_pixels(p) for p in paths]
    stats = compute_images_stats(arrays, [8] * len(arrays))
    return {**stats.quality, "width": stats.image["width"], "height": stats.image["height"]}


def test_measurements_equal_cleanvision_functions(folder):
    from cleanvision.issue_managers.image_property import BlurrinessProperty, BrightnessProperty, calc_entropy

    paths = sorted(folder.iterdir())
    ours = _measures(paths)
    for i, path in enumerate(paths):
        image = Image.open(path)
        brightness = BrightnessProperty("dark").calculate(image)
        blur = BlurrinessProperty().calculate(image)
        expected = {"brightness_p5": brightness["brightness_perc_5"], "brightness_p99": brightness["brightness_perc_99"],
                    "blurriness": blur["blurriness"], "gray_histogram_std": blur["blurriness_grayscale_std"],
                    "entropy_bits": calc_entropy(image)}
        for name, value in expected.items():
            assert ours[name][i] == pytest.approx(value, rel=1e-12, abs=1e-12), (path.name, name)


def test_flags_equal_cleanvision_find_issues(folder):
    """dark, light, blurry, low information, odd aspect ratio and odd size: our flags are CleanVision's."""
    from cleanvision import Imagelab

    paths = sorted(folder.iterdir())
    lab = Imagelab(filepaths=[str(p) for p in paths])
    names = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size")
    lab.find_issues({name: {} for name in names}, verbose=False)
    theirs = lab.issues.loc[[str(p) for p in paths]]
    measures = _measures(paths)
    scores = absolute_scores(measures)
    # odd size through the distributed quartiles and the stage's own function
    table = pa.table({"image_id": [p.name for p in paths], "status": ["ok"] * len(paths), "label": [None] * len(paths),
                      "width": measures["width"], "height": measures["height"]})
    size = summarize_metrics(LocalParts([table.slice(0, 5), table.slice(5)]), ["image_area_sqrt"], False,
                             dispersion=False)[("all", "image_area_sqrt")]
    assert (size.q1, size.q3) == tuple(np.percentile(image_area_sqrt(measures["width"], measures["height"]), [25, 75]))
    mid, norm = odd_size_bounds(size.q1, size.q3)
    odd = add_odd_size([table], {"mid": mid, "norm": norm, "threshold": ISSUES["odd_size"].threshold})
    scores["odd_size"] = odd.column("score_odd_size").to_numpy()
    flagged_any = 0
    for name in names:
        ours = scores[name] > ISSUES[name].threshold
        assert ours.tolist() == theirs[f"is_{name}_issue"].tolist(), name
        assert scores[name] == pytest.approx(1 - theirs[f"{name}_score"].to_numpy(), abs=1e-12), name
        flagged_any += int(ours.sum())
    assert flagged_any >= 6  # the cases do exercise the flags
    assert count_flags(odd, {}) == {"odd_size": int((scores["odd_size"] > 0.5).sum())}


def test_grayscale_and_noisy_on_known_answers():
    rng = np.random.default_rng(1)
    picture = _picture(rng, 64, 64)
    gray_as_rgb = io.BytesIO()
    picture.convert("L").convert("RGB").save(gray_as_rgb, "JPEG", quality=85)
    cases = {
        "colour": np.asarray(picture),
        "gray stored as RGB JPEG": np.asarray(Image.open(gray_as_rgb).convert("RGB")),
        "one channel": np.asarray(picture.convert("L"))[..., None],
        "uniform noise": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "noise at 512 px": rng.integers(0, 256, (512, 700, 3), dtype=np.uint8),
        "smooth photo at 512 px": np.asarray(_picture(rng, 700, 512)),
        "constant": np.full((16, 16, 3), 77, np.uint8),
    }
    stats = compute_images_stats(list(cases.values()), [8] * len(cases))
    scores = absolute_scores({**stats.quality, "width": stats.image["width"], "height": stats.image["height"]})
    flags = {name: dict(zip(cases, scores[name] > ISSUES[name].threshold)) for name in ("grayscale", "noisy")}
    assert flags["grayscale"] == {"colour": False, "gray stored as RGB JPEG": True, "one channel": True,
                                  "uniform noise": False, "noise at 512 px": False, "smooth photo at 512 px": False,
                                  "constant": True}
    assert flags["noisy"] == {"colour": False, "gray stored as RGB JPEG": False, "one channel": False,
                              "uniform noise": True, "noise at 512 px": True, "smooth photo at 512 px": False,
                              "constant": False}
    for name, values in scores.items():
        assert np.all((values >= 0) & (values <= 1)), name


def test_sixteen_bit_images_are_measured_on_display_levels():
    rng = np.random.default_rng(2)
    eight = np.asarray(_picture(rng, 40, 40))
    sixteen = eight.astype(np.uint16) * 257  # the same picture at 16 bits
    stats = compute_images_stats([eight, sixteen], [8, 16])
    for name in QUALITY_MEASURES:
        assert stats.quality[name][0] == pytest.approx(stats.quality[name][1], rel=1e-12), name
