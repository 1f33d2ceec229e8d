"""Everything a stage needs about the run it is part of: :class:`RunContext`.

:func:`open_run` prepares a run before any stage: it reads the ``--reference`` run, inspects the
models, takes the output directory's lease, starts Ray and has its tasks build the manifest parts
(:mod:`ood_ray.io.inputs`), and either starts a fresh run
(writing its fingerprint) or reopens an interrupted one (``--resume``: same run id, fingerprint
checked, unfinished parts removed). :meth:`RunContext.commit` assembles ``run.json`` and commits.
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any


from ood_ray.config import AuditConfig, ConfigError
from ood_ray.io import storage
from ood_ray.io.inputs import Inputs
from ood_ray.run.layout import LEDGER, RunLayout
from ood_ray.run.lease import Lease
from ood_ray.run.ledger import Ledger, differences, fingerprint
from ood_ray.run.state import FORMAT_VERSION, RunState, read_state
from ood_ray.stages.base import SectionView, Stage

log = logging.getLogger(__name__)

_VERSIONED = ("ood-ray", "ray", "pyarrow", "numpy", "pillow", "duckdb", "scipy")


def pause_point(point: str) -> None:
    """``OOD_RAY_PAUSE_AT=<point>``: the driver waits here, so that the fault tests can kill it at a
    chosen point (``before:<stage>``: before a stage runs; ``compact:written``: the coalesced parts
    written, the stage not recorded; ``commit``: before the commit;
    ``switch``: inside it, after the run's ``run.json`` is written and before the output switches
    to it). Nothing happens without the variable."""
    import os

    if os.environ.get("OOD_RAY_PAUSE_AT") == point:
        log.warning("pausing at %s (OOD_RAY_PAUSE_AT)", point)
        time.sleep(float(os.environ.get("OOD_RAY_PAUSE_S", "3600")))


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class StageTimer:
    """Wall-clock seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
            log.info("stage %s: %.2fs", name, self.seconds[name])


@dataclass
class RunContext:
    """The run in progress (see module docstring)."""

    config: AuditConfig
    layout: RunLayout
    lease: Lease
    ledger: Ledger
    inputs: Inputs
    infos: list = field(default_factory=list)
    reference: RunState | None = None
    resumed: bool = False
    timer: StageTimer = field(default_factory=StageTimer)
    started: float = field(default_factory=time.perf_counter)
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    staged: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    resume_report: dict[str, Any] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)
    #: a run without Ray (ood_ray.run.local)
    local: bool = False
    _con: Any = None
    _registered: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # -- configuration ------------------------------------------------------------------------
    def section(self, stage: Stage) -> SectionView:
        """The config sections ``stage`` reads (and only those)."""
        return SectionView(self.config, stage.reads, stage.name)

    @property
    def retry(self) -> storage.RetryPolicy:
        io = self.config.io
        return storage.RetryPolicy(io.retry_attempts, io.retry_base_delay_s, io.retry_max_delay_s)

    # -- what earlier stages produced ---------------------------------------------------------
    def images_uris(self) -> list[str]:
        """The newest ``images`` parts: staged ones while stages still add columns, else final."""
        if "images" in self.staged:
            return list(self.staged["images"])
        return [uri for uri, _ in self.files.get("images", [])]

    @property
    def reference_split(self) -> str | None:
        """The split of this run's reference rows (``None``: every ``ok`` row), set by the scan."""
        return self.states.get("scan", {}).get("reference_split")

    def reference_where(self) -> str:
        """SQL condition selecting this run's reference rows."""
        split = self.reference_split
        if split is None:
            return "status = 'ok'"
        return "status = 'ok' AND split = '" + split.replace("'", "''") + "'"

    def parts(self, uris: list[str] | None = None) -> Any:
        """The work over the newest ``images`` parts (or over ``uris``): Ray tasks, or the driver
        for a table under ``ray.driver_pass_mb`` (:func:`ood_ray.parts.parts_for`)."""
        from ood_ray.parts import InProcessParts, parts_for

        uris = self.images_uris() if uris is None else uris
        if self.local:
            return InProcessParts(uris, self.layout, self.retry, num_cpus=self.config.ray.task_num_cpus)
        return parts_for(uris, self.layout, self.retry, num_cpus=self.config.ray.task_num_cpus,
                         driver_max_bytes=int(self.config.ray.driver_pass_mb * 2**20))

    def sampler(self, uris: list[str] | None = None) -> Any:
        """Seeded samples of the newest ``images`` parts (or of ``uris``) drawn by Ray tasks
        (:mod:`ood_ray.sampling`)."""
        from ood_ray.sampling import Sampler

        return Sampler(self.parts(uris))

    def con(self) -> Any:
        """A DuckDB connection whose ``images`` (and ``embeddings``) views are the newest files."""
        import duckdb

        from ood_ray.query import register_table
        from ood_ray.tables import EMBEDDINGS_SCHEMA

        if self._con is None:
            self._con = duckdb.connect()
        wanted = {"images": tuple(self.images_uris()),
                  "embeddings": tuple(uri for uri, _ in self.files.get("embeddings", []))}
        for name, uris in wanted.items():
            if self._registered.get(name) != uris:
                register_table(self._con, name, list(uris), EMBEDDINGS_SCHEMA if name == "embeddings" else None)
                self._registered[name] = uris
        return self._con

    def absorb(self, stage: Stage, result: Any) -> None:
        """Take in one stage's result (run or loaded)."""
        for table, entries in result.files.items():
            self.files[table] = list(entries)
        for name, uris in result.staged.items():
            self.staged[name] = list(uris)
            if name == "images" and not uris:
                self.staged.pop(name)
        self.artifacts += [uri for uri in result.artifacts if uri not in self.artifacts]
        self.values[stage.name] = result.value
        self.states[stage.name] = result.state
        if stage.report_key:
            self.reports[stage.report_key] = result.report

    # -- commit -------------------------------------------------------------------------------
    def commit(self, stages: list[Stage]) -> dict[str, Any]:
        """Write ``run.json`` and switch the output directory to this run."""
        scan = self.states.get("scan", {})
        self.timer.seconds["total_before_commit"] = round(time.perf_counter() - self.started, 3)
        info = {
            "format_version": FORMAT_VERSION,
            "source": self.config.source,
            "objects_in": self.inputs.num_rows,
            "executor": "local" if self.local else "ray",
            "rows_out": sum(rows for _, rows in self.files.get("images", [])),
            "status_counts": dict(sorted(scan.get("status_counts", {}).items())),
            "stage_seconds": self.timer.seconds,
            "worker_seconds": scan.get("worker_seconds", {}),
            "images_per_second": scan.get("images_per_second"),
            "listing": self.listing,
            "max_decode_bytes": scan.get("max_decode_bytes"),
            **{key: self.reports.get(key, {}) for key in ("lint_thresholds", "quality", "label_issues", "dedup", "knn", "structure",
                                                         "drift")},
            "ood": self._ood_report(),
            "stages": {stage.name: {"state": self.states[stage.name]} for stage in stages if stage.name in self.states},
            "resume": self.resume_report,
            "config": self.config.to_dict(),
            "versions": package_versions(),
        }
        if info["rows_out"] != info["objects_in"]:
            raise RuntimeError(f"counts do not reconcile: {info['objects_in']} objects in, {info['rows_out']} image rows out")
        def before_switch() -> None:
            pause_point("switch")
            self.lease.check()

        run = self.layout.commit(self.files, info, self.artifacts, before_switch=before_switch)
        storage.delete_tree(storage.join(self.layout.root, LEDGER))
        return run

    def _ood_report(self) -> dict[str, Any]:
        """``run.json``'s ``ood``: the fit's report, the autoencoder's threshold and report, the models."""
        from ood_ray.embed.actor import ensemble_members

        ood = dict(self.reports.get("ood", {}))
        autoencoder = self.reports.get("autoencoder")
        if autoencoder:
            ood["autoencoder"] = autoencoder
            threshold = self.states.get("autoencoder", {}).get("threshold")
            if threshold is not None:
                ood.setdefault("thresholds", {})["score_recon"] = {
                    "threshold": threshold, "n_reference": autoencoder.get("n_threshold"),
                    "quantile": self.config.ood.in_distribution_quantile, "from": autoencoder.get("threshold_from")}
        if self.infos:
            ood["ensemble_members"] = [info.alias for info in ensemble_members(self.infos)]
            ood["models"] = self.states.get("embed", {}).get("models", [])
        return ood

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self.lease.release()


def _resumable_run(base: RunLayout, lease: Lease) -> str:
    """The run id ``--resume`` continues: the lease holder's, else the newest uncommitted run."""
    holder = lease.read()
    committed = base.committed_run_id()
    candidates = [run_id for run_id in base.run_ids() if run_id != committed
                  and storage.exists(storage.join(base.out, "_runs", run_id, LEDGER, "fingerprint.json"))]
    if holder and holder.get("run_id") in candidates:
        return holder["run_id"]
    if not candidates:
        raise ConfigError(f"out={base.out!r}: --resume found no interrupted run to continue")
    return candidates[-1]


def open_run(config: AuditConfig, resume: bool = False) -> RunContext:
    """Prepare the run (see module docstring); raises :class:`ConfigError` before any cluster work
    when the output is taken, the reference is unusable, or a resume does not match."""
    from ood_ray.io.inputs import build_inputs, plan_fragments
    from ood_ray.run.local import local_run
    from ood_ray.run.ray_runtime import import_ray_data, init_ray, warm_workers
    from ood_ray.tables import RESERVED_COLUMNS

    timer = StageTimer()
    plan_fragments(config, RESERVED_COLUMNS)  # a missing or unreadable source fails here, before Ray
    reference = read_state(config.reference, "reference") if config.reference else None
    infos = []
    if config.models or reference is not None:
        from ood_ray.embed.models import inspect_models, reference_models

        with timer.stage("models"):
            infos = inspect_models(reference_models(config, reference))
            if reference is not None:
                check_reference_weights(infos, reference)
    base = RunLayout(config.out)
    if resume:
        probe = Lease(base.out, "?")
        layout = RunLayout(config.out, _resumable_run(base, probe))
    else:
        layout = base
        layout.check_writable(config.overwrite)
    lease = Lease(layout.out, layout.run_id)
    lease.acquire()
    try:
        local = local_run(config, bool(infos))
        if not local:
            init_ray(config)
            if config.ray.warm_workers:
                warm_workers(config.ray.task_num_cpus)  # not awaited: a task runs whether its reference is kept or not
            import_ray_data()
        ledger = Ledger(layout.ledger_dir)
        # A resumed run keeps the interrupted run's blocks (the ledger counts rows per block).
        recorded_block = (ledger.read_fingerprint() or {}).get("rows_per_block") if resume else None
        with timer.stage("manifest"):
            inputs = build_inputs(config, RESERVED_COLUMNS, layout, storage.RetryPolicy(
                config.io.retry_attempts, config.io.retry_base_delay_s, config.io.retry_max_delay_s),
                row_output_bytes=model_input_bytes(config, infos), rows_per_block=recorded_block, local=local)
        current = fingerprint(config.to_dict(), inputs, reference.run_id if reference else None)
        if resume:
            recorded = ledger.read_fingerprint() or {}
            changed = differences(recorded, current)
            if changed:
                raise ConfigError(f"--resume: run {layout.run_id} in {layout.out} was started with other inputs; "
                                  f"it cannot be resumed ({'; '.join(changed[:6])})")
            log.info("resuming run %s in %s (stages done: %s)", layout.run_id, layout.out, ", ".join(ledger.stages()) or "none")
            resumes = ledger.read_resume()
            resumes["resumes"] = resumes.get("resumes", 0) + 1
            ledger.write_resume(resumes)
        else:
            layout.clean_committed_tables()
            layout.remove_other_runs()
            ledger.write_fingerprint(current)
    except BaseException:
        lease.release()
        raise
    log.info("run %s: %d objects from %s -> %s (%d manifest parts)", layout.run_id, inputs.num_rows, config.source,
             layout.out, len(inputs.parts))
    return RunContext(config=config, layout=layout, lease=lease, ledger=ledger, inputs=inputs, infos=infos,
                      reference=reference, resumed=resume, timer=timer, listing=inputs.listing, local=local,
                      resume_report=ledger.read_resume() if resume else {})


def model_input_bytes(config: AuditConfig, infos: list) -> int:
    """Bytes of resized model (and autoencoder) inputs one scanned row carries (``H * W * 3`` each)."""
    sides = [tuple(info.data_config.get("input_size", (3, 224, 224)))[-2:] for info in infos]
    if config.autoencoder.enabled:
        sides.append((config.autoencoder.image_size, config.autoencoder.image_size))
    return int(sum(3 * h * w for h, w in sides))


def check_reference_weights(infos: list, reference: RunState) -> None:
    """Refuse to compare embeddings made with other weights than the reference's."""
    saved = {m["alias"]: m for m in reference.stage("embed").get("models", [])}
    for info in infos:
        before = saved.get(info.alias, {}).get("checkpoint_sha256")
        now = info.provenance.get("checkpoint_sha256")
        if before != now:
            raise ConfigError(f"model {info.alias!r}: checkpoint differs from the reference run's ({before} vs {now})")
