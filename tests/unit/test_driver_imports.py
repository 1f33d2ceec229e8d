"""The driver imports Ray Data while the warm-up tasks run (``import_ray_data``), so the scan's
Ray Data settings (``configure_ray_data``) import nothing more at the scan's start -- checked in a
fresh interpreter, where nothing else has imported Ray Data yet."""

from __future__ import annotations

import json
import subprocess
import sys

_COUNT_IMPORTS = """
import json, sys
from ood_ray.config import load_config
from ood_ray.run.ray_runtime import configure_ray_data, import_ray_data
import ray
config = load_config(None, [], source="s", out="o")
before = len(sys.modules)
if sys.argv[1] == "pre":
    import_ray_data()
imported_early = len(sys.modules) - before
before = len(sys.modules)
configure_ray_data(config)
print(json.dumps({"early": imported_early, "at_scan": len(sys.modules) - before, "ray_started": ray.is_initialized()}))
"""


def _imports(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _COUNT_IMPORTS, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_data_is_imported_before_the_scan_and_nothing_is_started():
    cold, warm = _imports("cold"), _imports("pre")
    assert cold["early"] == 0 and cold["at_scan"] > 200  # without it, the scan's start imports Ray Data
    assert warm["early"] > 200 and warm["at_scan"] == 0
    assert not warm["ray_started"]  # importing Ray Data and its context starts no Ray
