"""Progress across the cluster: workers report to one small actor, the driver logs a line.

Each scan task calls ``tracker.add.remote(...)`` once per block (fire and forget, a few bytes);
a daemon thread on the driver reads the totals every ``interval_s`` seconds and logs
``scan: 12,345/1,000,000 images (1.2%), 850 images/s, eta 19m``. The same totals give the summed
worker seconds per step (fetch vs decode+statistics) for ``run.json``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Totals reported by scan tasks."""

    def __init__(self) -> None:
        self.images = 0
        self.statuses: dict[str, int] = {}
        self.fetch_seconds = 0.0
        self.scan_seconds = 0.0

    def add(self, images: int, statuses: dict[str, int], fetch_seconds: float, scan_seconds: float) -> None:
        self.images += images
        for status, count in statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.fetch_seconds += fetch_seconds
        self.scan_seconds += scan_seconds

    def totals(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "statuses": dict(self.statuses),
            "fetch_seconds": self.fetch_seconds,
            "scan_seconds": self.scan_seconds,
        }


def format_progress(done: int, total: int, elapsed_s: float) -> str:
    """One progress line: done/total, percent, images/s and the remaining time."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    if rate > 0 and done < total:
        remaining = (total - done) / rate
        eta = f"{remaining / 60:.0f}m" if remaining >= 90 else f"{remaining:.0f}s"
    else:
        eta = "-"
    return f"scan: {done:,}/{total:,} images ({percent:.1f}%), {rate:,.1f} images/s, eta {eta}"


class ProgressLogger:
    """Logs :func:`format_progress` every ``interval_s`` seconds while the scan runs."""

    def __init__(self, tracker: Any, total: int, interval_s: float) -> None:
        self.tracker = tracker
        self.total = total
        self.interval_s = interval_s
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
        while not self._stop.wait(self.interval_s):
            try:
                done = ray.get(self.tracker.totals.remote(), timeout=30)["images"]
            except Exception as exc:  # noqa: BLE001 - progress must never take the job down
                log.debug("progress unavailable: %s", exc)
                continue
            log.info(format_progress(done, self.total, time.monotonic() - self._started))
