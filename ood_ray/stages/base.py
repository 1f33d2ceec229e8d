"""The stage contract: every pass of the audit has this one shape.

A stage (compare NeMo Curator's ``ProcessingStage``) is a class with

- ``name``; ``reads``, the config sections it reads (``ctx.section(self)`` hands it only those);
  ``writes``, the tables it writes; ``report_key``, where its report goes in ``run.json``;
- ``enabled(ctx)``;
- ``run(ctx) -> StageResult``: its files (committed tables and intermediate ones), its fitted
  state as JSON, its report, its artifacts, and the in-memory value later stages use;
- ``load(ctx, state)``: rebuild that value from the JSON state -- used by ``--resume`` (state from
  the run's ledger) and, for fitted stages, by ``--reference`` (state from the reference run).

The runner (:mod:`ood_ray.pipeline`), not the stages, times them, records them in the ledger,
loads recorded ones on resume, and commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ood_ray.run.context import RunContext


@dataclass
class StageResult:
    """What a stage produced (see module docstring)."""

    #: committed tables: ``{table: [(uri, rows)]}``
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: intermediate tables that later stages read: ``{name: [uri]}`` (replaces earlier ones)
    staged: dict[str, list[str]] = field(default_factory=dict)
    #: fitted state, JSON-safe: what :meth:`Stage.load` rebuilds the value from
    state: dict[str, Any] = field(default_factory=dict)
    #: this stage's part of ``run.json``
    report: dict[str, Any] = field(default_factory=dict)
    #: URIs of artifacts (index shards, detector states, weights) to commit
    artifacts: list[str] = field(default_factory=list)
    #: the in-memory value later stages use (never serialised)
    value: Any = None

    def to_record(self) -> dict[str, Any]:
        return {"files": {t: [list(e) for e in entries] for t, entries in self.files.items()}, "staged": self.staged,
                "state": self.state, "report": self.report, "artifacts": self.artifacts}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StageResult:
        return cls(files={t: [(uri, rows) for uri, rows in entries] for t, entries in record.get("files", {}).items()},
                   staged=record.get("staged", {}), state=record.get("state", {}), report=record.get("report", {}),
                   artifacts=record.get("artifacts", []))


class Stage:
    """Base class of the stages (see module docstring)."""

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    report_key: ClassVar[str | None] = None

    def enabled(self, ctx: RunContext) -> bool:
        return True

    def run(self, ctx: RunContext) -> StageResult:
        raise NotImplementedError

    def load(self, ctx: RunContext, state: dict[str, Any]) -> Any:
        """The value of a recorded run of this stage, rebuilt from its state (default: none)."""
        return None

    def resumable(self, state: dict[str, Any]) -> bool:
        """Whether a recorded run can be loaded (``False``: a resume runs the stage again)."""
        return True


class SectionView:
    """The configuration sections one stage reads; any other section is an error."""

    def __init__(self, config: Any, sections: tuple[str, ...], stage: str) -> None:
        self._config, self._sections, self._stage = config, sections, stage

    def __getattr__(self, name: str) -> Any:
        if name in self._sections:
            return getattr(self._config, name)
        raise AttributeError(f"stage {self._stage!r} reads the config sections {self._sections}, not {name!r}")
