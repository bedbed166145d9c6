"""`cod-sync RUN_DIR... [--tracking-uri URI]`: replay run directories' journals into MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_cod.tracking.journal import read_record
from megatron_cod.tracking.sink import TrackingError
from megatron_cod.tracking.sync import sync_run_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cod-sync",
        description="Replay the journal of training / analysis run directories into MLflow: adds what the "
        "MLflow run lacks (params, metrics per step, artifacts, final status), never twice.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (hold metrics.jsonl)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store to sync into (default: the one the run was configured with)",
    )
    return p


def _uri_for(run_dir: Path, override: str | None) -> str:
    if override:
        return override
    uri = read_record(run_dir).get("tracking_uri")
    if not uri:
        raise TrackingError(
            f"{run_dir} records no MLflow store (it ran with --no-mlflow): pass --tracking-uri"
        )
    return str(uri)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    failed = 0
    for raw in args.run_dirs:
        run_dir = Path(raw)
        try:
            if not run_dir.is_dir():
                raise TrackingError(f"{run_dir}: no such run directory")
            report = sync_run_dir(run_dir, _uri_for(run_dir, args.tracking_uri))
        except TrackingError as exc:
            print(f"cod-sync: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:  # an unreachable or refusing store
            print(
                f"cod-sync: error: {run_dir}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                file=sys.stderr,
            )
            failed += 1
            continue
        print(f"[cod-sync] {run_dir}: {report.summary()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
