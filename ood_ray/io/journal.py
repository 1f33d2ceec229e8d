"""Which row a scan task is decoding, in a file that outlives the worker process.

A decoder that crashes the process (a segfault in a native codec) or an image that makes the
worker run out of memory kills the whole task; Ray then retries the task, and without a record
the retry dies on the same row again, forever, and the other rows of the block never get theirs.

The journal is a memory-mapped file of one byte per row of the block, on the node's local disk,
named by the run and by a hash of the block's ``image_id`` values (the same on every attempt).
Before a row is decoded its byte is incremented, afterwards reset to 0 -- two stores to mapped
memory, no system call. A retried task that finds a row's byte at :data:`STRIKES` knows that the
row was being decoded when the worker died that many times, and ends it as ``undecodable`` with
:data:`WORKER_DIED` instead of trying again; a row that was in flight during one unrelated death
(a node drained, a worker killed) is simply decoded again. A task that finishes removes its file.

The file is node-local: a retry scheduled on another node starts a fresh count there (each node
still stops after two deaths on it).
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile

import xxhash

log = logging.getLogger(__name__)

#: Deaths while decoding one row after which the row is given up on.
STRIKES = 2
WORKER_DIED = (f"the worker process died {STRIKES} times while decoding this object (out of memory, or a crash in "
               "a decoder); given up so that the rest of its block is kept")


def journal_dir(run_id: str) -> str:
    """This node's folder for the journals of run ``run_id``."""
    return os.path.join(tempfile.gettempdir(), "ood-ray-journal", run_id)


def block_key(image_ids: list[str]) -> str:
    """A name for a block that every attempt at it computes alike."""
    digest = xxhash.xxh3_128()
    for image_id in image_ids:
        digest.update(image_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class DecodeJournal:
    """Strike counts of one block's rows (see module docstring)."""

    def __init__(self, directory: str, key: str, rows: int) -> None:
        self.path = os.path.join(directory, key)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < rows:
                os.ftruncate(fd, rows)
            self._map = mmap.mmap(fd, max(rows, 1))
        finally:
            os.close(fd)
        self.retried = any(self._map[:rows])

    @classmethod
    def open(cls, run_id: str, image_ids: list[str]) -> DecodeJournal | None:
        """The journal of this block, or ``None`` when the node's temp folder is not writable."""
        try:
            return cls(journal_dir(run_id), block_key(image_ids), len(image_ids))
        except OSError as exc:
            log.debug("no decode journal (%s): a row that kills its worker will be retried until Ray gives up", exc)
            return None

    def begin(self, row: int) -> bool:
        """Record that ``row`` is being decoded; ``False`` when it already killed :data:`STRIKES` workers."""
        strikes = self._map[row]
        if strikes >= STRIKES:
            return False
        self._map[row] = strikes + 1
        return True

    def end(self, row: int) -> None:
        self._map[row] = 0

    def finish(self) -> None:
        """The block is done: remove its journal."""
        self._map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
