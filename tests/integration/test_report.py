"""``ood-ray report`` on a real run with a model: every section, numbers equal to ``ood-ray query``,
and the page checked in a real headless Chromium (thumbnails loaded, no console errors, the map's
sample, whole duplicate groups, a source deleted after the audit shown as missing)."""

from __future__ import annotations

import json
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ood_ray.config import load_config
from ood_ray.evaluate import evaluate
from ood_ray.lint.issues import ISSUES
from ood_ray.pipeline import run_audit
from ood_ray.query import run_query
from ood_ray.report import ReportOptions, build_report

ALL_SECTIONS = ["overview", "lint", "quality", "duplicates", "ood", "clusters", "map", "drift", "evaluation"]
MAP_POINTS = 40
#: Deleted after the audit: a member of a planted exact-duplicate group, so its thumbnail is asked for.
DELETED = "train/circles/circles_001_as_bmp.bmp"


@pytest.fixture(scope="module")
def report_run(ray_session, demo_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    shutil.copytree(demo_dataset["images"], images)
    out = root / "out"
    config = load_config(None, ["models=[{name: test_resnet}]", "io.rows_per_block=20", "embed.batch_size=16"],
                         source=str(images), out=str(out))
    run = run_audit(config)
    evaluate(str(out), ood_labels=["stripes"])
    (images / DELETED).unlink()
    deleted_id = run_query(str(out), f"SELECT image_id FROM images WHERE uri LIKE '%{DELETED}'").column(0)[0].as_py()
    result = build_report(str(out), str(root / "report"), ReportOptions(map_points=MAP_POINTS))
    return {"out": str(out), "run": run, "result": result, "deleted_id": deleted_id, "root": root}


class _Attributes(HTMLParser):
    """Every element's attributes, and the ``data-*`` attributes the report puts on its numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append({"tag": tag, **{k: v or "" for k, v in attrs}})


def _page(result) -> list[dict[str, str]]:
    parser = _Attributes()
    parser.feed(Path(result.path).read_text(encoding="utf-8"))
    return parser.elements


def _values(elements, attribute: str) -> dict[str, str]:
    return {e[attribute]: e["data-value"] for e in elements if attribute in e}


def q(out, sql):
    return run_query(out, sql).to_pylist()


def test_every_section_and_the_files(report_run):
    result = report_run["result"]
    assert result.sections == ALL_SECTIONS
    folder = Path(result.folder)
    assert (folder / "report.html").is_file() and (folder / "plotly.min.js").stat().st_size > 1_000_000
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html.replace("https://plotly.com", "")
    assert "cdn" not in html.lower().replace("cdnjs", "")
    made = list((folder / "thumbs").glob("*.jpg"))
    assert len(made) == result.thumbnails - result.thumbnails_missing > 0
    assert result.thumbnails_missing >= 1 and all(key.startswith(report_run["deleted_id"]) for key in result.missing)
    assert result.map_points == MAP_POINTS
    recorded = json.loads((folder / "report.json").read_text())
    assert recorded["sections"] == ALL_SECTIONS and recorded["run_id"] == report_run["run"]["run_id"]
    # report.json's size leaves itself out; its time is the build's up to writing it
    assert recorded["bytes"] == result.bytes - (folder / "report.json").stat().st_size
    assert 0 < recorded["seconds"] <= result.seconds


def test_numbers_equal_the_query(report_run):
    out, elements = report_run["out"], _page(report_run["result"])
    statuses = {r["status"]: r["n"] for r in q(out, "SELECT status, count(*) AS n FROM images GROUP BY 1")}
    assert {k: int(v) for k, v in _values(elements, "data-status").items()} == statuses
    keys = _values(elements, "data-key")
    assert int(keys["rows_out"]) == q(out, "SELECT count(*) AS n FROM images")[0]["n"]
    assert int(keys["lint_flags"]) == q(out, "SELECT count(*) AS n FROM lint")[0]["n"]
    assert int(keys["leaking_groups"]) == q(out, "SELECT count(DISTINCT group_id) AS n FROM leakage")[0]["n"] >= 1
    assert int(keys["map_points"]) == MAP_POINTS
    assert int(keys["drift_drifted"]) == q(out, "SELECT count(*) FILTER (WHERE drifted) AS n FROM drift")[0]["n"]
    flags = {r["metric"]: r["n"] for r in q(out, "SELECT metric, count(*) AS n FROM lint GROUP BY 1")}
    shown_flags = {k: int(v) for k, v in _values(elements, "data-flags").items()}
    assert {k: v for k, v in shown_flags.items() if v} == flags
    groups = {f"{r['kind']}/{r['method']}": r["n"] for r in
              q(out, "SELECT kind, method, count(DISTINCT group_id) AS n FROM duplicates GROUP BY ALL")}
    assert {k: int(v) for k, v in _values(elements, "data-groups").items()} == groups
    sizes = {r["group_id"]: r["n"] for r in q(out, "SELECT group_id, count(*) AS n FROM duplicates GROUP BY 1")}
    shown_groups = [e for e in elements if "data-group-id" in e]
    assert shown_groups
    for group in shown_groups:
        assert int(group["data-group-size"]) == sizes[group["data-group-id"]]
    thresholds = report_run["run"]["ood"]["thresholds"]
    shown_thresholds = _values(elements, "data-threshold")
    assert set(shown_thresholds) == set(thresholds)
    for score, value in shown_thresholds.items():
        assert float(value) == thresholds[score]["threshold"]
        flagged = q(out, f"SELECT count(*) FILTER (WHERE is_ood_{score.removeprefix('score_')}) AS n FROM images")[0]["n"]
        assert int(_values(elements, "data-flagged")[score]) == flagged
    issues = {name: q(out, f"SELECT count(*) FILTER (WHERE is_{name}) AS n FROM images")[0]["n"] for name in [*ISSUES, "label_issue"]}
    assert {k: int(v) for k, v in _values(elements, "data-issue").items()} == issues
    assert report_run["run"]["label_issues"]["method"] == "knn"  # test_resnet's 1000 classes are not the 3 labels
    assert sum(issues[name] for name in ISSUES) > 0
    assert int(keys["quality_flagged_images"]) == q(out, "SELECT count(*) AS n FROM images WHERE " + " OR ".join(
        f"coalesce(is_{name}, false)" for name in ISSUES))[0]["n"]
    cluster_sizes = {str(r["cluster"]): r["size"] for r in q(out, "SELECT cluster, size FROM clusters")}
    assert {k: int(v) for k, v in _values(elements, "data-cluster-size").items()} == cluster_sizes


def test_the_deleted_source_is_shown_as_missing(report_run):
    elements = _page(report_run["result"])
    figures = [i for i, e in enumerate(elements) if e.get("data-image-id") == report_run["deleted_id"]]
    assert figures
    for index in figures:
        inner = elements[index + 1]
        assert inner["tag"] == "div" and inner["class"] == "missing" and "gone" in inner["title"]


# ---------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} not found (apt install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        if os.environ.get("OOD_RAY_REQUIRE_BROWSER"):
            pytest.fail(f"OOD_RAY_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, report_run):
    browser.get(Path(report_run["result"].path).as_uri())
    deadline = time.monotonic() + 60
    while browser.execute_script("return document.body.dataset.ready") != "true":
        assert time.monotonic() < deadline, "the page's plots did not render"
        time.sleep(0.1)
    return browser


def test_in_the_browser_every_section_and_no_console_error(page, report_run):
    shown = page.execute_script("return Array.from(document.querySelectorAll('section.report-section')).map(s => s.id)")
    assert shown == ALL_SECTIONS
    plots = page.execute_script("return Array.from(document.querySelectorAll('div.plot')).map(d => d.data ? d.data.length : 0)")
    assert plots and all(n > 0 for n in plots)
    errors = [entry for entry in page.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    shots = Path(os.environ.get("OOD_RAY_SCREENSHOTS") or report_run["root"] / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    for section in page.find_elements("css selector", "section.report-section"):
        page.execute_script("arguments[0].scrollIntoView()", section)
        path = shots / f"{section.get_attribute('id')}.png"
        section.screenshot(str(path))
        assert path.stat().st_size > 5000


def test_in_the_browser_every_thumbnail_loaded(page, report_run):
    images = page.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) >= report_run["result"].thumbnails - report_run["result"].thumbnails_missing
    assert [src for src, complete, width in images if not complete or width == 0] == []


def test_in_the_browser_the_map_holds_the_sample(page, report_run):
    points = page.execute_script("return document.getElementById('map-plot').data[0].x.filter(v => v !== null).length")
    assert points == MAP_POINTS
    page.execute_script("var s = document.getElementById('map-colour'); s.value = 'label'; s.dispatchEvent(new Event('change'))")
    colours = page.execute_script("return document.getElementById('map-plot').data[0].marker.color")
    labels = q(report_run["out"], "SELECT count(DISTINCT label) AS n FROM images WHERE x_pca IS NOT NULL")[0]["n"]
    assert len(colours) == MAP_POINTS and 1 < len(set(colours)) <= labels + 1
    from selenium.webdriver.common.action_chains import ActionChains

    plot = page.find_element("id", "map-plot")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    loaded = 0
    for point in range(5):  # a real mouse over a point (retried on the next point if the hover is missed)
        dx, dy = page.execute_script(  # the point, from the plot's centre (where the mouse is moved from)
            "var gd = arguments[0], fl = gd._fullLayout, box = gd.getBoundingClientRect(), i = arguments[1];"
            "return [fl.xaxis.l2p(gd.data[0].x[i]) + fl._size.l - box.width / 2,"
            "        fl.yaxis.l2p(gd.data[0].y[i]) + fl._size.t - box.height / 2]", plot, point)
        ActionChains(page).move_to_element_with_offset(plot, round(dx) + 3, round(dy) + 3).pause(0.2) \
            .move_to_element_with_offset(plot, round(dx), round(dy)).perform()
        deadline = time.monotonic() + 5
        while not loaded and time.monotonic() < deadline:
            loaded = page.execute_script(
                "var i = document.querySelector('#hover-thumb img'); return i && i.complete ? i.naturalWidth : 0")
            time.sleep(0.1)
        if loaded:
            break
    assert loaded > 0


def test_in_the_browser_groups_show_every_member_and_missing_sources(page, report_run):
    groups = page.execute_script(
        "return Array.from(document.querySelectorAll('.group')).map(g => [parseInt(g.dataset.groupSize), "
        "g.querySelectorAll('figure.thumb').length, g.querySelectorAll('.more').length])")
    members = report_run["result"]
    assert groups
    for size, shown, more in groups:
        if size <= ReportOptions().group_members:
            assert (shown, more) == (size, 0)
        else:
            assert (shown, more) == (ReportOptions().group_members, 1)
    # the deleted image is asked for twice (a section thumbnail, a map one); nothing else is missing
    assert set(members.missing) == {f"{report_run['deleted_id']}-{px}" for px in (128, 64)} & set(members.missing)
    assert len(members.missing) == members.thumbnails_missing >= 1
    missing = page.execute_script(
        "return Array.from(document.querySelectorAll(`figure[data-image-id='${arguments[0]}']`)).map("
        "f => [f.querySelectorAll('img').length, f.querySelector('.missing') ? f.querySelector('.missing').textContent : null])",
        report_run["deleted_id"])
    assert missing and all(images == 0 and text and "gone" in text for images, text in missing)
