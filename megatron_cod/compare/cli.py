"""`cod-compare`: compare training runs from MLflow (or run directories) in a report with plots.

cod-compare --sweep cpu_depth --claims --output-dir comparisons/depth
cod-compare --experiment megatron_cod --filter "params.\\`model.num_layers\\` = '16'"
cod-compare --runs ID ID ... --at-tokens 1000000
cod-compare --run-dirs runs/a runs/b --output-dir cmp
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from pathlib import Path
from typing import NoReturn

from megatron_cod.cli_errors import cli_main
from megatron_cod.compare.alignment import PointChoice, align
from megatron_cod.compare.claims import judge
from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.grouping import drop_superseded, group_runs
from megatron_cod.compare.plots import write_plots
from megatron_cod.compare.report import render
from megatron_cod.compare.table import build_table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CompareError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cod-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sel = p.add_argument_group("which runs")
    sel.add_argument(
        "--experiment", action="append", default=[], metavar="NAME", help="MLflow experiment (repeatable)"
    )
    sel.add_argument("--runs", nargs="+", default=[], metavar="ID", help="MLflow run ids")
    sel.add_argument("--sweep", metavar="NAME", help="runs cod-sweep tagged with this sweep name")
    sel.add_argument("--filter", metavar="STR", help="an MLflow search_runs filter string")
    sel.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db, as training)",
    )
    sel.add_argument(
        "--run-dirs",
        nargs="+",
        default=[],
        metavar="DIR",
        help="training run directories (config.yaml + metrics.jsonl), no tracker needed",
    )
    at = p.add_argument_group("where runs are compared (default: the most tokens every finished run reached)")
    at.add_argument("--at-tokens", type=int, metavar="N", help="at N tokens (nearest telemetry step)")
    at.add_argument("--at-step", type=int, metavar="N", help="at step N (nearest telemetry step)")
    at.add_argument("--final", action="store_true", help="each run at its last telemetry step")
    out = p.add_argument_group("output")
    out.add_argument(
        "--output-dir", metavar="DIR", help="report directory (default: comparisons/<name>-<time>)"
    )
    out.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    out.add_argument("--claims", action="store_true", help="judge the paper's claims from these runs")
    out.add_argument("--normalized-depth", action="store_true", help="per-layer plots against l/L")
    out.add_argument("--title", default="Run comparison")
    out.add_argument("--no-mlflow", action="store_true", help="do not log the comparison as an MLflow run")
    out.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="experiment of the comparison run (default: the compared runs' own, if they share one)",
    )
    out.add_argument(
        "--tag-compared", action="store_true", help="tag each compared run with the comparison run's id"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _output_dir(args: argparse.Namespace) -> Path:
    if args.output_dir:
        path = Path(args.output_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("comparisons") / f"{args.sweep or 'compare'}-{stamp}"
    if path.exists() and not path.is_dir():
        raise CompareError(f"--output-dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not args.overwrite:
        raise CompareError(f"--output-dir {path} is not empty; pass --overwrite to replace it")
    return path


def _check_selection(args: argparse.Namespace) -> None:
    mlflow_selection = args.experiment or args.runs or args.sweep or args.filter
    if args.run_dirs and mlflow_selection:
        raise CompareError(
            "--run-dirs reads run directories; it does not combine with --experiment/--runs/--sweep/--filter"
        )
    if not args.run_dirs and not mlflow_selection:
        raise CompareError("name the runs: --experiment, --runs, --sweep, --filter or --run-dirs")


def run(args: argparse.Namespace) -> Path:
    from megatron_cod.compare import mlflow_source
    from megatron_cod.compare.mlflow_log import log_comparison, start_comparison_run
    from megatron_cod.compare.rundir_source import load_run_dirs
    from megatron_cod.config import LoggingConfig
    from megatron_cod.data.atomic import staged_directory
    from megatron_cod.tracking import resolve_tracking_uri, tracked_run

    _check_selection(args)
    choice = PointChoice(args.at_tokens, args.at_step, args.final)
    output_dir = _output_dir(args)
    uri = args.tracking_uri or resolve_tracking_uri(LoggingConfig())
    client, mlflow_runs = None, []
    if args.run_dirs:
        records = load_run_dirs(args.run_dirs)
        source = f"{len(args.run_dirs)} run directories"
        if args.tracking_uri and not args.no_mlflow:
            client = mlflow_source.open_client(uri)
    else:
        client = mlflow_source.open_client(uri)
        selection = mlflow_source.Selection(args.experiment, args.runs, args.sweep, args.filter)
        mlflow_runs = mlflow_source.select_runs(client, uri, selection)
        print(f"[cod-compare] reading {len(mlflow_runs)} runs from {uri}", flush=True)
        records = mlflow_source.load_records(client, uri, mlflow_runs, choice)
        source = f"{selection.describe()} in {uri}"
    records, superseded = drop_superseded(records)
    alignment = align(records, choice)
    varying, groups = group_runs(records)
    table = build_table(groups, alignment)
    claims = judge(table, varying) if args.claims else None
    comparison = None
    if client is not None and not args.no_mlflow:
        params = {
            "selection": source,
            "compared_at": alignment.description,
            "num_runs": len(records),
            "varying": ",".join(varying),
            "claims": args.claims,
        }
        comparison = start_comparison_run(
            client, uri, mlflow_runs, args.mlflow_experiment, output_dir.name, params
        )
    with tracked_run(comparison) if comparison is not None else contextlib.nullcontext():
        with staged_directory(output_dir) as staging:
            figures = write_plots(groups, alignment, staging, args.normalized_depth)
            (staging / "report.md").write_text(
                render(args.title, source, records, varying, alignment, table, superseded, figures, claims)
            )
        if comparison is not None:
            log_comparison(client, comparison, output_dir, records if mlflow_runs else [], args.tag_compared)
            print(f"[cod-compare] MLflow comparison run {comparison.run_id} in {uri}")
    print(f"[cod-compare] {len(records)} runs in {len(groups)} groups; report: {output_dir / 'report.md'}")
    return output_dir


@cli_main("")
def main(argv: list[str]) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
