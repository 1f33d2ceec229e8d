"""One writer per output directory: a lease file with its owner, refreshed while the run lives.

``OUT/_lease.json`` holds the run id, the host, the process id (and that process's start time,
so a reused pid is not mistaken for the owner), when the run started and when the lease was last
refreshed (every :data:`HEARTBEAT_S` seconds by a daemon thread). A second audit into the same
``OUT`` refuses at once, naming the run that holds it. A lease is *stale* -- left by a dead
process -- when its owner ran on this host and that process is gone, or when it ran elsewhere and
has not been refreshed for :data:`STALE_AFTER_S` seconds; a stale lease is taken over with a
warning that names the run it belonged to. The commit re-reads the lease and refuses to switch
if another run took it, so no interleaving of two runs can delete the other's files.

Taking a lease is write-then-verify (there is no atomic create-if-absent on every object
store): the new owner writes its lease, waits :data:`SETTLE_S`, and reads it back; of two runs
that raced, only the one whose lease survived continues.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from ood_ray.config import ConfigError
from ood_ray.io import storage
from ood_ray.run.ray_runtime import process_start as _process_start

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
SETTLE_S = 0.2


class LeaseLost(RuntimeError):
    """Another run took this run's output directory; nothing is committed."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Lease:
    """The lease of ``run_id`` on ``out`` (see module docstring)."""

    def __init__(self, out: str, run_id: str) -> None:
        self.out = storage.normalize_uri(out)
        self.run_id = run_id
        self.uri = storage.join(self.out, LEASE_FILE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record: dict[str, Any] = {}

    def read(self) -> dict[str, Any] | None:
        data = b""
        for _ in range(5):
            try:
                data = storage.read_bytes(self.uri)
                return json.loads(data)
            except FileNotFoundError:
                return None
            except ValueError:
                log.warning("unreadable lease %s: %r", self.uri, data[:200])
                time.sleep(0.2)
        return {"run_id": "?", "corrupt": True}

    @staticmethod
    def stale_reason(holder: dict[str, Any]) -> str | None:
        """Why ``holder``'s lease is stale, or None when its run may still be alive."""
        if holder.get("corrupt"):
            return "the lease file is unreadable"
        if holder.get("host") == socket.gethostname():
            start = _process_start(int(holder.get("pid", -1)))
            if start is None:
                return f"process {holder.get('pid')} is gone"
            if holder.get("pid_start") and start != holder.get("pid_start"):
                return f"process {holder.get('pid')} is another process now"
            return None
        refreshed = holder.get("heartbeat_unix", 0.0)
        if time.time() - refreshed > STALE_AFTER_S:
            return f"not refreshed for {time.time() - refreshed:.0f}s"
        return None

    def acquire(self) -> None:
        """Take the lease or raise :class:`ConfigError` naming the run that holds it."""
        holder = self.read()
        mine = holder is not None and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()
        if holder is not None and not mine:
            reason = self.stale_reason(holder)
            if reason is None:
                raise ConfigError(f"out={self.out!r}: run {holder.get('run_id')} is writing there (pid {holder.get('pid')} "
                                  f"on {holder.get('host')}, started {holder.get('started_at')}); wait for it to finish "
                                  "or use another --out")
            log.warning("taking over the lease of run %s on %s (%s)", holder.get("run_id"), self.out, reason)
        pid = os.getpid()
        self.record = {"run_id": self.run_id, "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
                       "started_at": _now(), "heartbeat_unix": time.time()}
        self._write()
        time.sleep(SETTLE_S)
        self.check()
        self._thread = threading.Thread(target=self._heartbeat, name="ood-ray-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.record["heartbeat_unix"] = time.time()
        storage.write_bytes_atomic(self.uri, json.dumps(self.record).encode())

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = self.read()
                if holder is None or holder.get("run_id") != self.run_id:
                    log.error("the lease on %s was taken by run %s", self.out, (holder or {}).get("run_id"))
                    return
                self._write()
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("could not refresh the lease on %s: %s", self.out, exc)

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease is no longer this run's."""
        holder = self.read()
        if holder is None or holder.get("run_id") != self.run_id:
            raise LeaseLost(f"out={self.out!r}: run {(holder or {}).get('run_id')} took the output directory from run "
                            f"{self.run_id}; this run does not commit")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.read()
        if holder is not None and holder.get("run_id") == self.run_id:
            storage.delete_files([self.uri])
