"""``ood-ray audit | query | summary | demo`` -- thin: parse, validate, call the package.

The config is validated before Ray is imported, so a bad option fails in well under a second
with the key and the value (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ood_ray.config import FINETUNE_METHODS, ConfigError, load_config
from ood_ray.report.options import ReportOptions

log = logging.getLogger("ood_ray")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit arguments, shared with ``jobs/audit.py``."""
    parser.add_argument("source", nargs="?", help="local folder, s3://bucket/prefix, or manifest (.parquet/.csv)")
    parser.add_argument("--out", help="run directory to write (local path or s3://)")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set lint.method=iqr (repeatable)")
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="NAME",
                        help="add a model: a timm name or package.module:function (repeatable)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace a committed run in OUT")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the interrupted run in OUT (same inputs and config; see 'When a run fails')")
    parser.add_argument("--reference", help="a committed run to score against (its models, index and thresholds)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("-v", "--verbose", action="store_true")


def exit_at_once(code: int) -> int:
    """End the process now when it started its own local Ray: Ray's orderly shutdown takes 2-3 s,
    and the reaper that started with that Ray (ood_ray.run.ray_runtime) stops every process of it
    as soon as this one exits, however it exits. Otherwise (a Ray it joined, none): return."""
    from ood_ray.run.ray_runtime import started_local_ray

    if not started_local_ray():
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def audit_from_args(args: argparse.Namespace) -> int:
    """Validate, run and report an audit; returns the exit code."""
    try:
        config = load_config(args.config, args.overrides, args.models, source=args.source, out=args.out,
                             overwrite=args.overwrite, address=args.address, reference=args.reference)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    from ood_ray.pipeline import run_audit
    from ood_ray.run.lease import LeaseLost

    try:
        run = run_audit(config, resume=args.resume)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    except LeaseLost as exc:
        print(f"ood-ray: {exc}", file=sys.stderr)
        return 1
    print(format_summary(run))
    return 0


def holdout_from_args(args: argparse.Namespace) -> int:
    """``ood-ray holdout``: validate, hold out, audit, evaluate, print the evaluation."""
    try:
        config = load_config(args.config, args.overrides, args.models, source=args.source, out=args.out,
                             overwrite=args.overwrite, address=args.address)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    from ood_ray.holdout import run_holdout
    from ood_ray.query import format_table, run_query

    classes = args.holdout_classes.split(",") if args.holdout_classes else None
    try:
        run = run_holdout(config, classes, args.holdout_count, args.seed, args.id_split)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"held out {run['holdout']['classes']} (seed {args.seed})")
    print(format_table(run_query(config.out, "SELECT * FROM evaluation ORDER BY auroc DESC"), max_rows=1000))
    return 0


def report_from_args(args: argparse.Namespace) -> int:
    """``ood-ray report``: build the report and say where to open it."""
    from ood_ray.report import build_report

    try:
        options = ReportOptions(**{name: getattr(args, name) for name in (
            "thumbnails", "map_points", "thumb_px", "bins", "group_members", "neighbors", "seed")})
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    try:
        result = build_report(args.out, args.to, options, args.address)
    except FileNotFoundError as exc:
        print(f"ood-ray: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {len(result.sections)} sections ({', '.join(result.sections)}), {result.thumbnails} thumbnails "
          f"({result.thumbnails_missing} without an image), {result.map_points} map points, "
          f"{result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s")
    print(f"open file://{result.path}")
    return 0


def format_summary(run: dict) -> str:
    """Human summary of a committed run: counts per status, duplicates, lint, timings."""
    lines = [f"run {run['run_id']}  source {run.get('source')}",
             f"objects in: {run['objects_in']}   rows out: {run['rows_out']}", "status counts:"]
    for status, count in run["status_counts"].items():
        lines.append(f"  {status:<17}{count:>10}")
    tables = run.get("tables", {})
    lines.append("tables: " + ", ".join(f"{name} {info['rows']} rows" for name, info in sorted(tables.items())))
    groups = run.get("dedup", {}).get("groups", {})
    if groups:
        lines.append("duplicate groups: " + ", ".join(f"{k} {v}" for k, v in groups.items()))
    flagged = (run.get("quality") or {}).get("flagged")
    if flagged:
        lines.append("quality issues: " + ", ".join(f"{k} {v}" for k, v in flagged.items()))
    clusters = run.get("structure", {}).get("clusters")
    if clusters:
        lines.append(f"clusters: {clusters['k']} ({clusters['method']}, model {run['structure']['model']})")
    drift = run.get("drift", {})
    if drift.get("tests"):
        by_split = "; ".join(f"{split}: {len(tests)}" for split, tests in drift.get("drifted_by_split", {}).items())
        lines.append(f"drift: {drift['drifted']} of {drift['tests']} tests drifted ({drift['compared']})"
                     + (f" -- {by_split}" if by_split else ""))
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in run["stage_seconds"].items()))
    if run.get("images_per_second"):
        lines.append(f"scan throughput: {run['images_per_second']:.1f} images/s")
    return "\n".join(lines)


def finetune_from_args(args: argparse.Namespace) -> int:
    """Validate and run ``ood-ray finetune``; returns the exit code."""
    overrides = list(args.overrides) + ([f"finetune.method={args.method}"] if args.method else [])
    try:
        config = load_config(args.config, overrides, args.models, source=args.source, out=args.out, address=args.address)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    from ood_ray.finetune.run import run_finetune

    try:
        record = run_finetune(config, args.outliers, args.split,
                              args.holdout_classes.split(",") if args.holdout_classes else None, args.holdout_count,
                              args.holdout_seed, resume=args.resume)
    except ConfigError as exc:
        print(f"ood-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    last = record["epochs"][-1] if record["epochs"] else {}
    print(f"{record['method']} fine-tune of {record['base']['name']}: {record['data']['train']} training images, "
          f"{sum(v for k, v in record['data']['outlier_counts'].items() if k == 'ok')} outliers, "
          f"{len(record['epochs'])} epochs; validation accuracy {last.get('validation_accuracy')}; "
          f"{record['seconds']['per_epoch']:.1f} s per epoch\n"
          f"audit with it: ood-ray audit DATA --out OUT --config {storage_join(args.out, 'model.yaml')}")
    return 0


def storage_join(base: str, name: str) -> str:
    from ood_ray.io import storage

    return storage.join(storage.normalize_uri(base), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ood-ray", description="Audit image datasets on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="run an audit and write a run directory")
    add_audit_arguments(audit)

    query = sub.add_parser("query", help="run SQL (DuckDB) over a run's tables")
    query.add_argument("out", help="run directory")
    query.add_argument("sql", help="SQL; tables: images, channels, duplicates, lint, embeddings, predictions, neighbors, duplicate_pairs, clusters, drift, evaluation; views: leakage, lint_by_class")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument("--max-rows", type=int, default=200)

    summary = sub.add_parser("summary", help="counts per status, tables, duplicates and timings of a run")
    summary.add_argument("out", help="run directory")
    summary.add_argument("--json", action="store_true", help="print run.json")

    evaluate = sub.add_parser("evaluate", help="OOD metrics of every score of a run against known OOD images")
    evaluate.add_argument("out", help="run directory")
    truth = evaluate.add_mutually_exclusive_group(required=True)
    truth.add_argument("--ood-column", help="a boolean column of images (from the manifest): true = OOD")
    truth.add_argument("--ood-split", dest="ood_splits", action="append", help="a split whose images are OOD (repeatable)")
    truth.add_argument("--ood-labels", help="comma-separated labels whose images are OOD")
    evaluate.add_argument("--id-split", dest="id_splits", action="append", default=[],
                          help="in-distribution split(s); default: every row neither OOD nor reference")
    evaluate.add_argument("--score", dest="scores", action="append", default=[], help="only these score columns")
    evaluate.add_argument("--format", choices=("table", "csv", "json"), default="table")

    holdout = sub.add_parser("holdout", help="hold out classes as OOD, audit, and evaluate every score (MixOE)")
    add_audit_arguments(holdout)
    chosen = holdout.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--holdout-classes", help="comma-separated labels to hold out")
    chosen.add_argument("--holdout-count", type=int, help="hold out this many labels, drawn under --seed")
    holdout.add_argument("--seed", type=int, default=0)
    holdout.add_argument("--id-split", default="test", help="the in-distribution split of the evaluation")

    finetune = sub.add_parser("finetune", help="fine-tune a classifier with auxiliary outliers (OE / MixOE) on Ray Train")
    finetune.add_argument("source", help="labelled images: folder, s3://bucket/prefix, or manifest")
    finetune.add_argument("--outliers", help="auxiliary outlier images (any audit source); required by oe and mixoe")
    finetune.add_argument("--out", required=True, help="output folder (local or s3://): model.safetensors, model.yaml, finetune.json")
    finetune.add_argument("--method", choices=FINETUNE_METHODS,
                          help="oe, mixoe, or ce (cross-entropy only, no outliers: a baseline); default: finetune.method (mixoe)")
    finetune.add_argument("--model", dest="models", action="append", default=[], metavar="NAME", help="the base model")
    finetune.add_argument("--config", help="YAML with one models: entry and a finetune: section")
    finetune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    finetune.add_argument("--split", help="train on the rows of this split only (e.g. train)")
    held = finetune.add_mutually_exclusive_group()
    held.add_argument("--holdout-classes", help="comma-separated labels left out of the training, as 'ood-ray holdout' does")
    held.add_argument("--holdout-count", type=int, help="leave out this many labels, drawn under --holdout-seed")
    finetune.add_argument("--holdout-seed", type=int, default=0)
    finetune.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out")
    finetune.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    finetune.add_argument("-v", "--verbose", action="store_true")

    report = sub.add_parser("report", help="a static HTML report of a run (thumbnails, plots, map), opened from disk")
    report.add_argument("out", help="run directory (local or s3://)")
    report.add_argument("--to", help="report folder (default OUT/report; ./report-<run_id> for a run on S3)")
    report.add_argument("--address", help="Ray address for the thumbnail tasks (default: RAY_ADDRESS or a local Ray)")
    defaults = ReportOptions()
    for name, help_text in (("thumbnails", "thumbnails per section"), ("map_points", "points on the map"),
                            ("thumb_px", "thumbnail size (px)"), ("bins", "histogram bins"),
                            ("group_members", "members shown per duplicate group"),
                            ("neighbors", "nearest reference images per OOD example"), ("seed", "map sample seed")):
        report.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=getattr(defaults, name),
                            help=f"{help_text} (default {getattr(defaults, name)})")
    report.add_argument("-v", "--verbose", action="store_true")

    demo = sub.add_parser("demo", help="write the example dataset (planted defects) into a folder")
    demo.add_argument("folder")
    demo.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "audit":
        return exit_at_once(audit_from_args(args))
    if args.command == "evaluate":
        _setup_logging(False)
        from ood_ray.evaluate import evaluate as run_evaluate
        from ood_ray.query import format_table

        try:
            table = run_evaluate(args.out, args.ood_column, args.ood_splits or [],
                                 (args.ood_labels or "").split(",") if args.ood_labels else [], args.id_splits, args.scores)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"ood-ray: {exc}", file=sys.stderr)
            return 2
        print(format_table(table, args.format, max_rows=1000))
        return 0
    if args.command == "holdout":
        return exit_at_once(holdout_from_args(args))
    if args.command == "report":
        return exit_at_once(report_from_args(args))
    if args.command == "finetune":
        return exit_at_once(finetune_from_args(args))
    if args.command == "query":
        from ood_ray.query import format_table, run_query

        try:
            result = run_query(args.out, args.sql)
        except FileNotFoundError as exc:
            print(f"ood-ray: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - a SQL error is the user's to read, not a traceback
            print(f"ood-ray: query failed: {exc}", file=sys.stderr)
            return 1
        print(format_table(result, args.format, args.max_rows))
        return 0
    if args.command == "summary":
        from ood_ray.run.layout import read_run

        try:
            run = read_run(args.out)
        except FileNotFoundError as exc:
            print(f"ood-ray: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(run, indent=2) if args.json else format_summary(run))
        return 0
    if args.command == "demo":
        _setup_logging(False)
        from ood_ray.demo import write_demo_dataset

        manifest = write_demo_dataset(args.folder, seed=args.seed)
        print(f"wrote {len(manifest)} files to {args.folder}/images "
              f"(also {args.folder}/manifest.csv; planted defects in {args.folder}/PLANTED.json)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
