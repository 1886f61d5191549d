"""``evalkit`` command line: a thin layer over the same functions the notebooks call.

Exit codes: 0 success; 1 other evalkit error; 2 invalid study file; 3 run directory in use
or would be overwritten; 4 a stage failed (its notebook shows where); 5 ``evalkit compare``
flagged a regression beyond noise; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from evalkit.analysis import compare as cmp
from evalkit.analysis.index import write_index
from evalkit.analysis.summary import render
from evalkit.assets import models as assets
from evalkit.assets import taskpack
from evalkit.core.archive import archive_run
from evalkit.core.environment import environment_info
from evalkit.core.errors import ConfigError, EvalkitError
from evalkit.core.records import load_runs
from evalkit.core.run import REPORT_HTML, list_runs, open_run
from evalkit.core.specs import ModelSpec
from evalkit.preflight import load_study
from evalkit.runner import run_study
from evalkit.stages import accuracy, latency
from evalkit.ui.kernels import install_kernels

EPILOG = """\
commands:
  validate CONFIG...     check study files without loading a model (one line per problem)
  run CONFIG             validate, then execute the four notebooks into a new run directory
                         (--resume RUN_ID continues an interrupted run, keeping finished work;
                         --cluster ray[:ADDRESS] runs the variants as Ray tasks)
  runs [ROOT]            list run directories, newest first
  show RUN               print a run's headline records
  index [ROOT]           rebuild ROOT/index.html (every run's report, superseded runs
                         marked, the answer page linked; --answer PAGE)
  summary RUN... -o PAGE one page across runs: which scheme for which workload regime
  archive RUN...         slim finished runs for committing: gzip large raw JSON and the logs,
                         delete duplicate HTML and run.lock (--dry-run: only report sizes)
  assets list|prepare    list or build the packaged offline models and task pack
  env                    print the environment record written into each run (env.json)
  kernels                register the evalkit-eval and evalkit-quantize Jupyter kernels
  rebuild RUN            recompute a run's latency (and quality) records from its raw data
  compare RUN_A RUN_B    change in quality and latency from run A to run B, with intervals;
                         exit 5 when a regression beyond noise is flagged (for cron alerts);
                         --previous RUN compares RUN with the study's previous run

exit codes: 0 ok, 2 invalid study, 3 run dir busy/exists/not archivable, 4 stage failed,
            5 compare found a regression, 130 interrupted
"""


def _cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.config:
        try:
            cfg = load_study(path)
        except ConfigError as exc:
            bad += 1
            for line in exc.problems:
                print(line, file=sys.stderr)
            continue
        stages = ["quantize"] + [s for s in ("accuracy", "latency") if getattr(cfg, s)]
        print(f"{path}: ok -- study {cfg.study}: {len(cfg.variants)} variants "
              f"({', '.join(v.name for v in cfg.variants)}); stages: {', '.join(stages)}, report")
    return 2 if bad else 0


def _cmd_run(args: argparse.Namespace) -> int:
    run = run_study(args.config, run_id=args.run_id, resume=args.resume,
                    stages=args.stages, progress=not args.no_progress, cluster=args.cluster,
                    latency_node=args.latency_node, accelerator_type=args.accelerator_type)
    report = run.path / "report.html"
    print(f"run {run.run_id} finished: {run.path}")
    if report.is_file():
        print(f"report: {report}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    for r in list_runs(args.root):
        rep = next((p for p in (r.path / REPORT_HTML, r.path / "report.html") if p.is_file()),
                   None)
        shown = rep.relative_to(r.path).as_posix() if rep is not None else "(no report)"
        print(f"{r.study}/{r.run_id}\t{shown}\t{r.path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    df = load_runs(args.run)
    head = df[df["stat"].isin(["value", "p50", "delta"])]
    cols = ["variant", "stage", "task", "workload", "concurrency", "metric", "stat", "value",
            "unit", "status"]
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        print(head[cols].to_string(index=False))
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    print(write_index(args.root, args.answer))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    print(render(args.runs, args.out, progress=not args.no_progress))
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    code = 0
    for path in args.runs:
        try:
            r = archive_run(path, dry_run=args.dry_run)
        except EvalkitError as exc:
            print(f"evalkit: {exc}", file=sys.stderr)
            code = code or exc.exit_code
            continue
        what = (f"{len(r.compressed)} gzipped, {len(r.removed)} removed" if r.changed
                else "already archived")
        print(f"{path}: {r.bytes_before:,} -> {r.bytes_after:,} bytes "
              f"({r.bytes_before / 2**20:.2f} -> {r.bytes_after / 2**20:.2f} MiB); {what}"
              + (" (dry run: nothing changed)" if r.dry_run and r.changed else ""))
    return code


def _cmd_assets(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in assets.PACKAGED_MODELS:
            print(f"packaged model  {name}")
        for name in assets.list_presets():
            print(f"preset          {name}")
        for t in taskpack.available_tasks("local"):
            print(f"task (local)    {t}")
        return 0
    names = args.names or ["gemma3-270m"]
    for name in names:
        m = assets.prepare(ModelSpec(source="packaged", name=name))
        print(f"{name}: {m.path}")
    print(f"task pack: {taskpack.build_task_pack()}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    print(json.dumps(environment_info(), indent=2, default=str))
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    for path in install_kernels(
        prefix=args.prefix, eval_python=args.eval_python, quantize_python=args.quantize_python,
        quantize_pythonpath=args.quantize_pythonpath,
    ):
        print(path)
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    if not run.stage_records_path("accuracy").is_file() and any(
            run.path.glob("raw/accuracy/*/*/results.json*")):  # .json.gz once archived
        df = accuracy.rebuild_records(run)
        print(f"{run.path}: {len(df)} accuracy records assembled from finished units "
              "(the stage was interrupted)")
    if run.config().quality is not None and (run.path / "raw/quality/text.json").is_file():
        df = accuracy.rebuild_quality_records(run)
        print(f"{run.path}: {len(df)} quality records rebuilt from the per-token files")
    if run.stage_records_path("latency").is_file() or any(
            run.path.glob("raw/latency/*/units/*.parquet")):
        df = latency.rebuild_records(run)
        print(f"{run.path}: {len(df)} latency records rebuilt from raw data")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.previous:
        if len(args.runs) != 1:
            raise EvalkitError("compare --previous takes one run (the later one)")
        run_b = args.runs[0]
        run_a = cmp.previous_run(run_b)
        if run_a is None:
            print(f"{run_b}: no earlier run of this study under {run_b.resolve().parent}; "
                  "nothing to compare")
            return 0
    elif len(args.runs) == 2:
        run_a, run_b = args.runs
    else:
        raise EvalkitError("compare takes RUN_A RUN_B, or --previous RUN")
    df = cmp.compare_runs(run_a, run_b, latency_stats=args.stats,
                          min_latency_change_pct=args.min_change_pct,
                          min_capacity_change_pct=args.min_change_pct, resamples=args.resamples)
    shown = df if args.all or df.empty else df[df["regression"] | df["ci_low"].notna()]
    a, b = (Path(r).resolve() for r in (run_a, run_b))
    print(cmp.format_comparison(shown if len(shown) else df, f"{a.parent.name}/{a.name}",
                                f"{b.parent.name}/{b.name}"))
    if args.csv is not None:
        df.to_csv(args.csv, index=False)
        print(f"comparison written to {args.csv}")
    return cmp.REGRESSION_EXIT_CODE if df["regression"].any() else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalkit", description="Quality-versus-speed evaluation of quantized LLMs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd_parser = sub.add_parser("validate", help="check study files without loading a model")
    cmd_parser.add_argument("config", nargs="+", type=Path, help="study YAML file(s)")
    cmd_parser.set_defaults(func=_cmd_validate)

    cmd_parser = sub.add_parser("run", help="validate and execute a study (four notebooks)",
                       description="Validate CONFIG, then execute notebooks 01-04 with "
                       "papermill into OUTPUT_ROOT/STUDY/RUN_ID and render HTML reports.")
    cmd_parser.add_argument("config", type=Path, help="study YAML file")
    run_target = cmd_parser.add_mutually_exclusive_group()
    run_target.add_argument("--run-id", help="id for the new run (default: UTC time + random suffix)")
    run_target.add_argument("--resume", metavar="RUN_ID", help="continue an existing run of this study")
    cmd_parser.add_argument("--stages", nargs="+", choices=["quantize", "accuracy", "latency", "report"],
                   help="run only these stages (in pipeline order)")
    cmd_parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    cmd_parser.add_argument("--cluster", metavar="ray[:ADDRESS]",
                   help="run each variant's quantize, accuracy and latency as Ray tasks: 'ray' "
                   "starts a local Ray instance, 'ray:ADDRESS' joins a cluster (auto, "
                   "HOST:PORT); the run directory must be on a filesystem all nodes share "
                   "(docs/cluster.md)")
    cmd_parser.add_argument("--latency-node", metavar="NODE",
                   help="with --cluster: run every latency task on this node (Ray node id, IP "
                   "or host name)")
    cmd_parser.add_argument("--accelerator-type", metavar="TYPE",
                   help="with --cluster: measure latency on this accelerator type (Ray's name, "
                   "e.g. H100) where the cluster has several")
    cmd_parser.set_defaults(func=_cmd_run)

    cmd_parser = sub.add_parser("runs", help="list run directories, newest first")
    cmd_parser.add_argument("root", nargs="?", type=Path, default=Path("outputs"))
    cmd_parser.set_defaults(func=_cmd_runs)

    cmd_parser = sub.add_parser("show", help="print a run's headline records")
    cmd_parser.add_argument("run", type=Path, help="run directory")
    cmd_parser.set_defaults(func=_cmd_show)

    cmd_parser = sub.add_parser("index", help="rebuild OUTPUT_ROOT/index.html")
    cmd_parser.add_argument("root", nargs="?", type=Path, default=Path("outputs"))
    cmd_parser.add_argument("--answer", type=Path, default=None,
                   help="the answer page to link (default ROOT/summary.html, else the "
                   "repository's docs/results.html two levels above ROOT)")
    cmd_parser.set_defaults(func=_cmd_index)

    cmd_parser = sub.add_parser("summary", help="one HTML page across runs: which scheme for which "
                       "workload", description="Executes notebooks/05_summary.ipynb over the "
                       "runs (run directories, or output roots holding runs) and writes its "
                       "HTML without code to --out. Built from valid latency points only.")
    cmd_parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_ROOT")
    cmd_parser.add_argument("-o", "--out", type=Path, default=Path("outputs/summary.html"),
                   help="the page to write (default outputs/summary.html); links to the runs' "
                   "reports are relative to it")
    cmd_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd_parser.set_defaults(func=_cmd_summary)

    cmd_parser = sub.add_parser("archive", help="slim finished run directories for committing",
                       description="Per run directory, in place: gzip raw JSON over 64 KiB "
                       "(not *.summary.json, provenance.json, offline.json, units/) and the "
                       "logs; delete run.lock, the root report.html copy of "
                       "html/04_report.html, html/*.code.html and the other stages' HTML "
                       "whose executed notebook is kept. Readers accept the archived run; a "
                       "second archive changes nothing. Refuses a run in use or with a stage "
                       "still running (exit 3).")
    cmd_parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories")
    cmd_parser.add_argument("--dry-run", action="store_true",
                   help="change nothing; print the sizes the runs would have")
    cmd_parser.set_defaults(func=_cmd_archive)

    cmd_parser = sub.add_parser("assets", help="list or prepare packaged models and the task pack")
    cmd_parser.add_argument("action", choices=["list", "prepare"])
    cmd_parser.add_argument("names", nargs="*", help="packaged models to prepare (default gemma3-270m)")
    cmd_parser.set_defaults(func=_cmd_assets)

    cmd_parser = sub.add_parser("env", help="print the environment record")
    cmd_parser.set_defaults(func=_cmd_env)

    cmd_parser = sub.add_parser("rebuild", help="recompute latency records from raw per-request data; "
                       "assemble the accuracy records of an interrupted stage from its units")
    cmd_parser.add_argument("run", type=Path, help="run directory")
    cmd_parser.set_defaults(func=_cmd_rebuild)

    cmd_parser = sub.add_parser("compare", help="change in quality and latency between two runs",
                       description="Per variant and metric, the change from RUN_A (earlier) to "
                       "RUN_B (later): accuracy with paired-bootstrap intervals over documents, "
                       "latency percentiles with bootstrap intervals over requests. Exit 0: no "
                       "regression beyond noise; exit 5: at least one (listed as REGRESSION).")
    cmd_parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="RUN_A RUN_B: the earlier run (the reference), then the later one")
    cmd_parser.add_argument("--previous", action="store_true",
                   help="one RUN: compare it with the study's previous run under the same "
                   "output root (exit 0 with a note when there is none)")
    cmd_parser.add_argument("--stats", nargs="+", default=["p50"], metavar="PCT",
                   choices=["p50", "p90", "p99"], help="latency percentiles (default p50)")
    cmd_parser.add_argument("--min-change-pct", type=float, default=5.0,
                   help="latency and capacity changes below this %% of RUN_A's value are "
                   "never flagged (default 5)")
    cmd_parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    cmd_parser.add_argument("--all", action="store_true",
                   help="also list values compared without an interval (records only)")
    cmd_parser.add_argument("--csv", type=Path, help="also write the full comparison as CSV")
    cmd_parser.set_defaults(func=_cmd_compare)

    cmd_parser = sub.add_parser("kernels", help="register the two Jupyter kernels",
                       description="Write kernel specs evalkit-eval and evalkit-quantize under "
                       "PREFIX/share/jupyter/kernels (default: this Python's prefix).")
    cmd_parser.add_argument("--prefix", type=Path, default=Path(sys.prefix))
    cmd_parser.add_argument("--eval-python", type=Path, default=Path(sys.executable))
    cmd_parser.add_argument("--quantize-python", type=Path, required=True,
                   help="Python of the quantize environment (llm-compressor)")
    cmd_parser.add_argument("--quantize-pythonpath", default=None,
                   help="PYTHONPATH for the quantize kernel, where llm-compressor is installed "
                   "apart from the eval packages (e.g. a --target directory)")
    cmd_parser.set_defaults(func=_cmd_kernels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    except EvalkitError as exc:
        print(f"evalkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("evalkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
