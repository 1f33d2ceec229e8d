"""Starting or joining Ray, and the Ray Data settings every stage runs under."""

from __future__ import annotations

import logging
import os
from typing import Any

from ood_ray.config import AuditConfig

log = logging.getLogger(__name__)


def init_ray(config: AuditConfig) -> None:
    """Connect to ``--address``/``RAY_ADDRESS`` or start a local Ray (reused if already up)."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if config.ray.num_cpus:
        kwargs["num_cpus"] = config.ray.num_cpus
    if config.ray.object_store_memory_mb:
        kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
    log.info("starting a local Ray")
    ray.init(**kwargs)


def configure_ray_data(config: AuditConfig) -> None:
    """Ray Data's context for one stage: a stalled pipeline fails instead of hanging, no progress
    bars (our own progress line instead), operator reservation as configured."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_no_progress_timeout_s = config.ray.no_progress_timeout_s
    context.wait_for_min_actors_s = config.ray.no_progress_timeout_s
    context.op_resource_reservation_enabled = config.ray.op_resource_reservation
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A task whose worker or node died is retried (Ray Data's default for tasks); actor tasks too.
    context.actor_task_retry_on_errors = False
