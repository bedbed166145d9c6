"""Log an export or import as an MLflow run nested under the training run (analysis's create_run)."""

from __future__ import annotations

import time
from pathlib import Path

from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.export.errors import ExportError


def log_run(
    kind: str,
    run_name: str,
    parent_run_id: str | None,
    experiment: str,
    parent_required: bool,
    params: dict[str, str],
    metrics: dict[str, float],
    artifacts: list[Path],
    failed: bool = False,
) -> str:
    """One finished run: params, metrics at step 0, artifact files; FAILED when ``failed``."""
    from mlflow.entities import Metric, Param

    from megatron_cod.analysis.mlflow_log import create_run

    try:
        client, run_id = create_run(parent_run_id, experiment, run_name, kind, parent_required)
    except AnalysisError as exc:
        raise ExportError(str(exc)) from exc
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        )
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    return run_id
