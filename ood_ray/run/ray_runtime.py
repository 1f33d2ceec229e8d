"""Starting or joining Ray, and the Ray Data settings every stage runs under."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
from typing import Any

from ood_ray.config import AuditConfig, ConfigError

log = logging.getLogger(__name__)


def init_ray(config: AuditConfig) -> None:
    """Connect to ``--address``/``RAY_ADDRESS`` or start a local Ray (reused if already up)."""
    start_ray(config.address, config.ray.num_cpus, config.ray.object_store_memory_mb)


#: Modules a Ray Data map task imports when its arguments are unpickled in a new worker, beyond
#: what the scan's modules import: Ray 2.60 reaches its issue detectors and, through them, the
#: state API's pydantic models (~0.5 s of a worker's first task, measured with py-spy).
RAY_DATA_TASK_IMPORTS = ("ray.data._internal.issue_detection",)


def _warm_worker() -> dict[str, Any]:
    """In a worker process: import what a scan task imports (and what unpickling a Ray Data task
    imports, :data:`RAY_DATA_TASK_IMPORTS`) and scan one small image (Pillow's plugins, the hashes'
    resize matrices, SciPy's DCT), so the scan's first task in this process starts at full speed.
    Returns its process id, seconds, the image's status and the Ray Data modules it imported."""
    import io
    import time

    started = time.perf_counter()
    import numpy as np
    from PIL import Image

    import ood_ray.stages.scan  # noqa: F401 - Ray Data, pyarrow and the scan's modules
    imported = []
    for module in RAY_DATA_TASK_IMPORTS:
        try:
            importlib.import_module(module)
            imported.append(module)
        except ImportError:  # another Ray version: only the warm-up is lost
            pass
    from ood_ray.config import load_config
    from ood_ray.scan import ScanSettings, scan_blobs

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    scanned = scan_blobs([(buffer.getvalue(), None)], ScanSettings.from_config(load_config(None, [], source=".", out=".")))
    return {"pid": os.getpid(), "seconds": time.perf_counter() - started, "status": scanned.meta["status"][0],
            "imported": imported}


def warm_workers(task_num_cpus: float) -> list[Any]:
    """Start one :func:`_warm_worker` task per ``task_num_cpus`` of the cluster's CPUs (at most 256)
    and return their references without waiting: they run while the driver reads the manifest, and
    Ray hands the scan's tasks the same, now warm, worker processes. A cold worker spent ~1.1 s
    importing Ray Data and the scan's modules and ran its first block ~30% slower (measured on 2
    CPUs, CIFAR-10)."""
    import ray

    slots = int(ray.cluster_resources().get("CPU", 0) // task_num_cpus)
    task = ray.remote(num_cpus=task_num_cpus, max_retries=0)(_warm_worker)
    return [task.remote() for _ in range(min(slots, 256))]


def import_ray_data() -> None:
    """Import Ray Data and make its context in the driver: called right after :func:`warm_workers`
    submits its tasks, so the ~0.35 s of CPU (560 modules) runs while the workers warm up, rather
    than at the scan's start, where the workers would wait for it (measured on 50,000 CIFAR files,
    medians of 10 alternated runs each: scan stage 10.68 -> 10.46 s, all stages 14.25 -> 13.95 s).
    Starts nothing: Ray Data's helper actors start with its first execution."""
    import ray.data

    ray.data.DataContext.get_current()


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_memory_mb: int | None = None) -> None:
    """Connect to ``address``/``RAY_ADDRESS`` or start a local Ray watched by the reaper (nothing
    when Ray is already up in this process).

    Without an address the run starts its own Ray (``address="local"``), whatever ``ray start``
    left on this machine: a plain ``ray.init()`` joins the cluster named in Ray's
    ``ray_current_cluster`` file, and when that cluster is gone (killed, not ``ray stop``-ed) it
    waits for it for about 14 minutes. An address is checked first (:func:`check_address`)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if object_store_memory_mb:
        kwargs["object_store_memory"] = object_store_memory_mb * 1024 * 1024
    log.info("starting a local Ray")
    ray.init(address="local", **kwargs)
    _start_reaper()


#: Seconds :func:`check_address` waits for a TCP connection to the cluster's address.
ADDRESS_CHECK_TIMEOUT_S = 10.0


def check_address(address: str) -> None:
    """Fail at once, naming the address, when nothing listens at a ``host:port`` or
    ``ray://host:port`` Ray address (``ray.init`` would retry for about 14 minutes); ``auto``,
    ``local`` and other forms (another scheme) are left to Ray."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if "://" in target or not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_CHECK_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"--address / RAY_ADDRESS {address!r}: no Ray answers there ({exc.strerror or exc})") from None


#: The reaper: watches its standard input (closed when the driver exits, however it died) and,
#: every half second meanwhile, the tree of processes below the local Ray processes the driver
#: started (agents and workers appear later); at the close it kills every process it has seen
#: that is still the same process (pid and start time), even those already orphaned, and every
#: process whose environment names one of them as its raylet (``RAY_RAYLET_PID``): a worker the
#: raylet forked in the last half second is orphaned before the tree is read again, and would
#: otherwise live on until its own check of the raylet, which an import-heavy start delays.
_REAPER = r"""
import os, select, signal, sys, time
def table():
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return out
def grow(procs):
    grown = True
    while grown:
        extra = {p: t for p, (parent, t) in procs.items() if parent in known and p not in known}
        known.update(extra)
        grown = bool(extra)
def raylet_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"RAY_RAYLET_PID="):
                    return int(item.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
    return None
known = {int(p): t for p, t in (a.split(":") for a in sys.argv[1:])}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.5)
    grow(table())
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
for _ in range(3):
    procs = table()
    grow(procs)
    raylets = set(known)
    for pid, (_, start) in procs.items():
        if pid not in known and pid != os.getpid() and raylet_of(pid) in raylets:
            known[pid] = start
    for pid, start in known.items():
        if pid in procs and procs[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
"""


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (field 22 of ``/proc/<pid>/stat``): with the pid, it names one
    process (a reused pid has another); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _start_reaper() -> None:
    """Make the local Ray this driver started die with it, even under ``SIGKILL``: Ray's own node
    processes exit with the driver, but its agents (dashboard, runtime-env) would outlive it."""
    if not os.path.isdir("/proc"):
        return
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    roots = [f"{pid}:{process_start(pid)}" for pid in children if process_start(pid)]
    if not roots:
        return
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, *roots], stdin=subprocess.PIPE, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    # The write end stays open in this process (and only here) until it exits.
    _REAPERS.append(reaper)


_REAPERS: list[Any] = []


def started_local_ray() -> bool:
    """Whether this process started a local Ray (and its reaper)."""
    return bool(_REAPERS)


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


def helper_options(resources: dict[str, float] | None) -> dict[str, Any]:
    """Ray options that place a small helper actor (progress, kNN shard) on a node offering the
    custom ``resources`` (``ray.helper_resources``) -- softly: when that node is gone, Ray restarts
    the helper anywhere instead of waiting for it."""
    if not resources:
        return {}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for node in ray.nodes():
        if node.get("Alive") and all(node.get("Resources", {}).get(name, 0) >= 0 for name in resources) \
                and all(name in node.get("Resources", {}) for name in resources):
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)}
    log.warning("no node offers the helper resources %s; helpers are placed by Ray", resources)
    return {}
