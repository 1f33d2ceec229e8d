"""Progress per stage, counted on the driver from the records of the parts written.

Every stage that writes rows goes through a :class:`ood_ray.run.sink.PartSink`, and every executor
hands each write task's record (its part files and their rows) to the driver as soon as that task
completes: :meth:`~ood_ray.run.sink.PartSink.write_dataset` on Ray, the process pool's futures in
:mod:`ood_ray.run.local`. The sink counts the rows of each table it absorbs, and a daemon thread on
the driver reads those counts every ``ray.progress_interval_s`` seconds and logs one line with each
step's count, rate and ETA::

    decode: 12,345/1,000,000 (1.2%), 850.0/s, eta 19m

A step counts the rows of the blocks that went through the whole stage (decoded, embedded when
there are models, written and recorded), so the line moves a block at a time. No helper process is
involved: an actor that workers reported to cost a new worker process per run (~0.9 s of CPU at the
start of the scan, the stage's first blocks ran that much slower; measured on 2 CPUs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _eta(remaining: float) -> str:
    return f"{remaining / 60:.0f}m" if remaining >= 90 else f"{remaining:.0f}s"


def format_step(step: str, done: int, total: int, elapsed_s: float) -> str:
    """``decode: 12,345/1,000,000 (1.2%), 850.0/s, eta 19m``."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    eta = _eta((total - done) / rate) if rate > 0 and done < total else "-"
    return f"{step}: {done:,}/{total:,} ({percent:.1f}%), {rate:,.1f}/s, eta {eta}"


class ProgressLogger:
    """Logs the line of ``steps`` (``{step: total rows}``) every ``interval_s`` seconds while a
    stage runs, and once more when it ends without an error; ``totals()`` gives the rows done per
    step (counted on the driver: see module docstring)."""

    def __init__(self, totals: Callable[[], dict[str, int]], steps: dict[str, int], interval_s: float) -> None:
        self.totals, self.steps, self.interval_s = totals, steps, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ood-ray-progress", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> ProgressLogger:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if kind is None:
            self._line()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._line()

    def _line(self) -> None:
        try:
            totals = self.totals()
        except Exception as exc:  # noqa: BLE001 - progress must never take the job down
            log.debug("progress unavailable: %s", exc)
            return
        elapsed = time.monotonic() - self._started
        log.info(" | ".join(format_step(step, totals.get(step, 0), total, elapsed) for step, total in self.steps.items()))
