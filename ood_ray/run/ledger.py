"""What a run has done, recorded so that a crashed run can resume: ``OUT/_runs/<run_id>/_ledger/``.

- ``fingerprint.json``: what the run is -- its configuration (without the keys that do not change
  results: ``out``, ``overwrite``, ``address``, ``ray.*``), a hash of its input manifest, the
  reference run it scores against, and the code version (the package version plus a hash of its
  source files). A resume under another fingerprint is refused, naming what differs.
- ``parts/<part>.json``: written by a scan task right after the part files of its blocks (one per
  table) are complete: their URIs and rows, the statuses and worker seconds of its rows. A part
  whose record is missing was not finished: its files are removed and its rows scanned again.
- ``stages/<stage>.json``: written by the runner after each stage: its files, fitted state and
  report. A resumed run loads a recorded stage instead of running it.
- ``resume.json``: how many resumes, rows kept and rows scanned again.

Every record is written atomically (a temporary file renamed into place; one PUT on S3), so a
record is either complete or absent.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from typing import Any

import xxhash

from ood_ray.io import storage

log = logging.getLogger(__name__)

#: Keys of the configuration that do not change a run's results (left out of the fingerprint).
UNFINGERPRINTED = ("out", "overwrite", "address", "ray")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<hash of the package's source files>``."""
    from importlib import metadata

    import ood_ray

    root = os.path.dirname(ood_ray.__file__)
    digest = xxhash.xxh3_64()
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    try:
        version = metadata.version("ood-ray")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"{version}+{digest.hexdigest()}"


def fingerprint(config_dict: dict[str, Any], inputs: Any, reference_run_id: str | None) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: the configuration (but
    :data:`UNFINGERPRINTED`), the manifest (a digest of every manifest part, computed by the tasks
    that wrote them), the reference run and the code."""
    config = {k: v for k, v in config_dict.items() if k not in UNFINGERPRINTED}
    return {"config": config, "manifest_hash": inputs.digest, "manifest_rows": inputs.num_rows,
            "rows_per_block": inputs.rows_per_block, "reference_run_id": reference_run_id,
            "code_version": code_version()}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    old, new = _flatten(recorded.get("config", {})), _flatten(current.get("config", {}))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now")
    if recorded.get("manifest_hash") != current.get("manifest_hash"):
        out.append(f"the input manifest ({recorded.get('manifest_rows')} rows then, {current.get('manifest_rows')} now, "
                   "or other URIs, labels or columns)")
    if recorded.get("reference_run_id") != current.get("reference_run_id"):
        out.append(f"the --reference run ({recorded.get('reference_run_id')} then, {current.get('reference_run_id')} now)")
    if recorded.get("code_version") != current.get("code_version"):
        out.append(f"the ood-ray code ({recorded.get('code_version')} then, {current.get('code_version')} now)")
    return out


class Ledger:
    """The records of one run (see module docstring). Picklable: scan tasks write part records."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _uri(self, *parts: str) -> str:
        return storage.join(self.directory, *parts)

    def _write(self, uri: str, record: dict[str, Any], retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
        storage.write_bytes_atomic(uri, json.dumps(record, default=str).encode(), retry)

    def _read(self, uri: str) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            return None

    def _read_all(self, folder: str) -> list[dict[str, Any]]:
        records = []
        for uri, _ in storage.list_files(self._uri(folder)):
            if uri.endswith(".json"):
                record = self._read(uri)
                if record is not None:
                    records.append(record)
        return records

    # fingerprint
    def write_fingerprint(self, print_: dict[str, Any]) -> None:
        self._write(self._uri("fingerprint.json"), print_)

    def read_fingerprint(self) -> dict[str, Any] | None:
        return self._read(self._uri("fingerprint.json"))

    # scan parts (written in the workers)
    def write_part(self, record: dict[str, Any], retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
        self._write(self._uri("parts", f"{record['part']}.json"), record, retry)

    def read_parts(self) -> list[dict[str, Any]]:
        return sorted(self._read_all("parts"), key=lambda r: r["part"])

    # stages
    def write_stage(self, name: str, record: dict[str, Any]) -> None:
        self._write(self._uri("stages", f"{name}.json"), {"stage": name, **record})

    def read_stage(self, name: str) -> dict[str, Any] | None:
        return self._read(self._uri("stages", f"{name}.json"))

    def stages(self) -> list[str]:
        return [record["stage"] for record in self._read_all("stages")]

    # what resumes cost (kept across several resumes)
    def write_resume(self, record: dict[str, Any]) -> None:
        self._write(self._uri("resume.json"), record)

    def read_resume(self) -> dict[str, Any]:
        return self._read(self._uri("resume.json")) or {}


def new_part_name(task_index: int | None = None) -> str:
    """A part's file name: the task's index and 32 random bits, or 80 random bits for a task without
    an index (a Ray write task; two of 10^9 such parts share a name with a chance under 10^-6)."""
    return f"{task_index:05d}-{uuid.uuid4().hex[:8]}" if task_index is not None else uuid.uuid4().hex[:20]
