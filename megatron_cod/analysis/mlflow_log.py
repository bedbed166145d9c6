"""Log an analysis report to MLflow: nested under a training run when given, else a run of its own.

Tracking store: MLFLOW_TRACKING_URI when set, else ``sqlite:///<cwd>/mlflow.db`` with artifacts
under ``<cwd>/mlartifacts``. A nested run lives in its parent's experiment and carries the tag
``mlflow.parentRunId``. Scores go in as metrics (per-layer curves with step = layer), the
configuration as params and the whole output directory as artifacts.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.analysis.suite import SuiteResults
from megatron_cod.tracking import tags as run_tags

_PARAM_LIMIT = 6000  # MLflow's maximum param value length


def tracking_uri(cwd: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cwd.resolve()}/mlflow.db"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:_PARAM_LIMIT]


def _find_run(client, run_id: str | None, required: bool):
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        if required:
            raise
        return None


def create_run(
    parent_run_id: str | None, experiment: str, run_name: str, kind: str, parent_required: bool = True
):
    """(client, run id) of a new run tagged ``kind`` (run_tags.KIND_*), nested under
    ``parent_run_id`` when that run is in this store.

    A parent that is only known from a checkpoint (parent_required False) may live in another
    store; then the run is top-level in ``experiment`` and records the training run id as a tag.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cwd = Path.cwd()
    client = MlflowClient(tracking_uri=tracking_uri(cwd))
    try:
        tags = {run_tags.KIND: kind}
        parent = _find_run(client, parent_run_id, parent_required)
        if parent is not None and parent_run_id is not None:
            experiment_id = parent.info.experiment_id
            tags[run_tags.PARENT_RUN] = parent_run_id
        else:
            if parent_run_id is not None:
                tags["megatron_cod.training_run_id"] = parent_run_id
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            elif "MLFLOW_TRACKING_URI" in os.environ:
                experiment_id = client.create_experiment(experiment)
            else:
                experiment_id = client.create_experiment(
                    experiment, artifact_location=(cwd / "mlartifacts").as_uri()
                )
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    except MlflowException as exc:
        raise AnalysisError(f"MLflow: {exc.message}") from exc
    return client, run.info.run_id


def log_to_mlflow(
    output_dir: Path,
    results: SuiteResults,
    params: dict[str, Any],
    parent_run_id: str | None,
    experiment: str,
    run_name: str,
    parent_required: bool = True,
) -> str:
    """Create the run (see create_run), log everything, close it; returns the new run id."""
    from mlflow.entities import Metric, Param

    client, run_id = create_run(parent_run_id, experiment, run_name, run_tags.KIND_ANALYSIS, parent_required)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in results.global_metrics().items() if math.isfinite(v)]
    for name, values in results.layer_curves().items():
        metrics += [Metric(name, v, now, step) for step, v in enumerate(values) if math.isfinite(v)]
    metrics += [Metric(f"seconds/{k}", v, now, 0) for k, v in results.seconds.items()]
    flat: dict[str, str] = {}
    _flatten("", params, flat)
    param_list = [Param(k, v) for k, v in flat.items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for start in range(0, len(param_list), 100):
        client.log_batch(run_id, params=param_list[start : start + 100])
    client.log_artifacts(run_id, str(output_dir))
    client.set_terminated(run_id)
    return run_id
