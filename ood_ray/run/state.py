"""A typed, versioned view of a run's state: what ``--reference`` and ``--resume`` read.

``run.json`` (format :data:`FORMAT_VERSION`) keeps, besides its reports, ``stages``: for every
stage that ran, the fitted state its :meth:`~ood_ray.stages.base.Stage.load` rebuilds from (the
reference selection, thresholds, fitted detectors, clusters and PCA axes, the kNN index files,
the autoencoder's weights file). A ``--reference`` run is read through :class:`RunState`; a
resumed run reads the same records from its ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ood_ray.config import AuditConfig, ConfigError, _build
from ood_ray.io import storage
from ood_ray.run.layout import read_run, table_files

#: Version of the ``run.json`` layout; a run of another version cannot serve as a reference.
FORMAT_VERSION = 2


@dataclass
class RunState:
    """A committed run, read once."""

    out: str
    run: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def config(self) -> AuditConfig:
        return _build(AuditConfig, self.run["config"])

    def stage(self, name: str) -> dict[str, Any]:
        """The fitted state of stage ``name`` (``{}`` when the stage did not run)."""
        return self.run.get("stages", {}).get(name, {}).get("state", {})

    def ran(self, name: str) -> bool:
        return name in self.run.get("stages", {})

    def files(self, table: str) -> list[str]:
        return table_files(self.out, self.run, table)

    def artifact(self, relative: str) -> str:
        """URI of one of the run's artifacts (a path relative to ``OUT``)."""
        return storage.join(self.out, relative)

    def read_artifact(self, relative: str) -> bytes:
        return storage.read_bytes(self.artifact(relative))

    @property
    def reference_split(self) -> str | None:
        """The split whose rows were the run's reference (``None``: every ``ok`` row)."""
        return self.stage("scan").get("reference_split")


def read_state(out: str, role: str = "reference") -> RunState:
    """The committed run in ``out`` as a :class:`RunState`; :class:`ConfigError` (naming ``role``)
    when there is none or it was written by an older ood-ray."""
    out = storage.normalize_uri(out)
    try:
        run = read_run(out)
    except FileNotFoundError as exc:
        raise ConfigError(f"{role}={out!r}: {exc}") from None
    version = run.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{role}={out!r}: run {run.get('run_id')} has run.json format {version}; this ood-ray reads "
                          f"format {FORMAT_VERSION} -- audit the reference data again")
    return RunState(out, run)
