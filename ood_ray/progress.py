"""Progress across the cluster, per stage: workers report to a small actor, the driver logs a line.

Each distributed stage's workers call ``tracker.add.remote(step, rows)`` once per block (fire and
forget, a few bytes): ``decode`` from the scan tasks, ``embed`` from the embedding actors, ``knn``
from the query tasks, ``finalize`` from the finalize tasks. A daemon thread on the driver reads the
totals every ``ray.progress_interval_s`` seconds and logs one line naming the steps at work with
their own count, rate and ETA::

    decode: 12,345/1,000,000 (1.2%), 850.0/s, eta 19m | embed: 11,008/1,000,000 (1.1%), 790.2/s, eta 21m

Progress is never a single point of failure: the actor restarts if its process or node dies
(counting from zero again, so the line under-counts until the stage ends), a report to a dead
actor is dropped, and a line that cannot be read is skipped. The run's counts and worker seconds
come from what the stages write, not from this actor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ProgressTracker:
    """Rows done per step, as reported by the workers."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def add(self, step: str, rows: int) -> None:
        self.done[step] = self.done.get(step, 0) + rows

    def totals(self) -> dict[str, int]:
        return dict(self.done)


def start_tracker(resources: dict[str, float] | None = None) -> Any:
    """The tracker actor (preferably on a node with ``resources``: ``ray.helper_resources``)."""
    import ray

    from ood_ray.run.ray_runtime import helper_options

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(ProgressTracker)
    return actor.options(**helper_options(resources)).remote()


def stop_tracker(tracker: Any) -> None:
    """Kill a tracker started by :func:`start_tracker` (best effort: Ray may already be gone)."""
    import ray

    try:
        ray.kill(tracker)
    except Exception as exc:  # noqa: BLE001 - progress is best effort, also at the end
        log.debug("progress actor not killed: %s", exc)


def report(tracker: Any, step: str, rows: int) -> None:
    """Report ``rows`` done in ``step``; never raises (progress is best effort)."""
    if tracker is None:
        return
    try:
        tracker.add.remote(step, rows)
    except Exception as exc:  # noqa: BLE001 - a dead tracker must not fail the task
        log.debug("progress not reported: %s", exc)


def _eta(remaining: float) -> str:
    return f"{remaining / 60:.0f}m" if remaining >= 90 else f"{remaining:.0f}s"


def format_step(step: str, done: int, total: int, elapsed_s: float) -> str:
    """``decode: 12,345/1,000,000 (1.2%), 850.0/s, eta 19m``."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    eta = _eta((total - done) / rate) if rate > 0 and done < total else "-"
    return f"{step}: {done:,}/{total:,} ({percent:.1f}%), {rate:,.1f}/s, eta {eta}"


def format_progress(done: int, total: int, elapsed_s: float, step: str = "scan") -> str:
    """One step's progress line (kept for callers of the single-step form)."""
    return format_step(step, done, total, elapsed_s)


class ProgressLogger:
    """Logs the line of ``steps`` (``{step: total rows}``) every ``interval_s`` seconds while a
    stage runs; ``on_line(totals)`` is called with each reading (the ledger keeps the last one)."""

    def __init__(self, tracker: Any, steps: dict[str, int], interval_s: float,
                 on_line: Callable[[dict[str, int]], None] | None = None) -> None:
        self.tracker, self.steps, self.interval_s, self.on_line = tracker, steps, interval_s, on_line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ood-ray-progress", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> ProgressLogger:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            try:
                totals = ray.get(self.tracker.totals.remote(), timeout=min(30.0, self.interval_s * 3))
            except Exception as exc:  # noqa: BLE001 - progress must never take the job down
                log.debug("progress unavailable: %s", exc)
                continue
            elapsed = time.monotonic() - self._started
            log.info(" | ".join(format_step(step, totals.get(step, 0), total, elapsed) for step, total in self.steps.items()))
            if self.on_line is not None:
                try:
                    self.on_line(totals)
                except Exception as exc:  # noqa: BLE001
                    log.debug("progress snapshot not written: %s", exc)
