"""Small runs without Ray: the audit of a few thousand objects in this process and a pool of
local worker processes.

Starting Ray costs about 4 s on this project's machine, Ray Data's first pipeline about 3 s more
and the shutdown about 2 s: more than the whole compute of a 1,000-image audit. A run is
**local** when ``ray.local_max_rows`` > 0, it has no models and no autoencoder (they need Ray
Data's actors and Ray Train), no ``--address``/``RAY_ADDRESS`` and no Ray already running in the
process, and its source names at most ``ray.local_max_rows`` objects (counted without reading
more than that: :func:`ood_ray.io.inputs.count_at_most`). Then the manifest parts are written by
the driver (:class:`ood_ray.io.inputs.DriverRunner`), every global pass runs in the driver
(:class:`ood_ray.parts.InProcessParts`), and the scan's blocks run in a process pool of one
worker per CPU (:func:`scan_locally`) through the very functions a Ray task runs: the same
manifest parts, blocks, part files, ledger records and tables as a Ray run (tested equal).

A worker that dies (a decoder that crashes the process, the out-of-memory killer) breaks the
pool; the blocks not finished are submitted again to a new pool, and the decode journal
(:mod:`ood_ray.io.journal`) ends a row that killed its worker twice as ``undecodable``, as a Ray
task retry would.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pyarrow as pa

from ood_ray.io import storage

log = logging.getLogger(__name__)

#: Pools started again after worker deaths before the scan gives up.
MAX_POOL_RESTARTS = 8


def local_run(config: Any, has_models: bool) -> bool:
    """Whether this run goes without Ray (see module docstring)."""
    limit = int(config.ray.local_max_rows)
    if limit <= 0 or has_models or config.autoencoder.enabled or config.address or os.environ.get("RAY_ADDRESS"):
        return False
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    from ood_ray.io.inputs import count_at_most

    count = count_at_most(config, limit)
    if count is None:
        return False
    log.info("%d objects (at most ray.local_max_rows = %d): a local run, without Ray", count, limit)
    return True


def _one_thread_per_cpu(cpus: int) -> None:
    """A pool worker's native thread pools (BLAS, OpenMP) at ``cpus`` threads, as Ray sets them for
    a task of ``num_cpus`` (``OMP_NUM_THREADS``): the same reductions, the same bits."""
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = str(cpus)
    threadpool_limits(limits=cpus)


def _scan_task(index: int, position: int, plan: Any, settings: Any, sink: Any) -> dict[str, Any]:
    """One block, as a Ray scan task does it: read, scan, write the parts, record them."""
    from ood_ray.stages.scan import scan_blocks

    table = scan_blocks(pa.table({"id": pa.array([position], pa.int64())}), plan, settings)
    return sink.write([table], index)


def scan_locally(plan: Any, settings: Any, sink: Any, workers: int, task_num_cpus: float = 1.0) -> None:
    """Every block of ``plan`` through a pool of ``workers`` processes; each written part is
    absorbed by ``sink`` as it completes (see module docstring)."""
    import multiprocessing

    todo = list(range(len(plan.blocks)))
    restarts = 0
    while todo:
        # fork: the workers start with the driver's modules loaded (spawn would import them again,
        # about 2 s). No model runs here, so no torch, CUDA or Ray state is forked; Arrow resets
        # its thread pools in a forked child. The AWS SDK does not survive a fork (its threads stay
        # behind and a child's S3 calls hang): once this process has used S3, spawn.
        context = multiprocessing.get_context("spawn" if storage.s3_used() else "fork")
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), mp_context=context,
                                 initializer=_one_thread_per_cpu, initargs=(max(1, int(task_num_cpus)),)) as pool:
            pending = {pool.submit(_scan_task, position, position, plan, settings, sink): position for position in todo}
            finished: set[int] = set()
            try:
                while pending:
                    ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in ready:
                        position = pending.pop(future)
                        written = future.result()
                        sink.absorb(written)
                        finished.add(position)
            except BrokenProcessPool:
                restarts += 1
                if restarts > MAX_POOL_RESTARTS:
                    raise
                log.warning("a scan worker died; %d blocks are scanned again in a new pool", len(todo) - len(finished))
            todo = [position for position in todo if position not in finished]
