"""``ray_cluster.yaml`` passes Ray's own cluster-config validation (what ``ray up`` runs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CONFIG.read_text())


def test_ray_accepts_the_cluster_config(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_head_does_no_work_and_there_are_gpu_and_cpu_groups(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    instances = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert instances["gpu"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))
    assert instances["cpu"].startswith(("c5", "c6", "c7", "m5", "m6", "m7"))
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())


def test_the_validation_really_rejects_a_broken_config(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["cpu"]["min_workrs"] = 1
    with pytest.raises(Exception, match="min_workrs"):
        validate_config(prepare_config(broken))
