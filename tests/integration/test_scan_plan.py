"""The scan's Ray Data plan: the range read and the scan are one task per block, and the scan is
never fused into the embedding actors (decoding stays in parallel CPU tasks) -- read from Ray
Data's own optimized physical plan (``Dataset.explain``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ood_ray.config import load_config
from ood_ray.embed.models import inspect_models
from ood_ray.stages.scan import ScanPlan, scan_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import EMBEDDER, MODELS_DIR  # noqa: E402


def _optimized_physical_plan(dataset, capsys) -> str:
    capsys.readouterr()
    dataset.explain()
    text = capsys.readouterr().out
    return text.split("Physical Plan (Optimized)")[-1]


@pytest.mark.parametrize("with_model", [False, True])
def test_decode_is_one_task_per_block_and_never_inside_the_actors(ray_session, capsys, with_model):
    sys.path.insert(0, str(MODELS_DIR))
    config = load_config(None, [EMBEDDER] if with_model else [], source="s", out="o")
    ctx = SimpleNamespace(config=config, infos=inspect_models(config.models) if with_model else [])
    plan = ScanPlan(parts=[], rows_per_block=8, blocks=np.arange(4), skip={}, rows=32)
    text = _optimized_physical_plan(scan_dataset(ctx, plan, settings=None), capsys)
    operators = re.findall(r"(\w+Operator)\[([^\]]*)\]", text)
    assert ("TaskPoolMapOperator", "ReadRange->MapBatches(scan_blocks)") in operators, text
    if with_model:
        actors = [names for kind, names in operators if kind == "ActorPoolMapOperator"]
        assert actors == ["MapBatches(EmbedActor)"], text  # scan_blocks is not in the actor's operator


@pytest.mark.parametrize("task_cpus, expected", [(1.0, 2), (0.5, 4)])
def test_warm_workers_start_one_task_per_cpu_slot_that_scans_an_image(ray_session, task_cpus, expected):
    """``ray.warm_workers``: one task per ``task_num_cpus`` slot of the session's 2 CPUs, each in a
    worker process that then holds the scan's modules and has scanned a real (PNG) image."""
    import ray

    from ood_ray.run.ray_runtime import RAY_DATA_TASK_IMPORTS, warm_workers

    results = ray.get(warm_workers(task_cpus), timeout=120)
    assert len(results) == expected
    assert all(r["status"] == "ok" and r["seconds"] > 0 and r["pid"] > 0 for r in results)
    # the modules a Ray Data task's arguments import exist in this Ray (a rename would lose the warm-up)
    assert all(r["imported"] == list(RAY_DATA_TASK_IMPORTS) for r in results)
