"""The MLflow run of a command other than training (analysis, eval, export, comparison).

Created here and only here: nested under the training run it belongs to when that run is in the
store (MLflow's ``mlflow.parentRunId``, in the parent's experiment), tagged with its kind, and
ended like a training run: FINISHED, FAILED with the reason in ``megatron_cod.failure``, or
KILLED. Use it through ``tracked_run(open_tool_run(...))``.

Unlike training, these commands log synchronously: they are short, and their report is complete
only once the store holds it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import tags
from megatron_cod.tracking.mlflow_sink import (
    MlflowSink,
    bound_http_retries,
    ensure_experiment,
    resolve_tracking_uri,
)
from megatron_cod.tracking.sink import RUN_STATUSES, RunStatus, TrackingError


class ToolRun:
    """One open run; every call goes straight to the store."""

    def __init__(self, sink: MlflowSink) -> None:
        self._sink = sink
        self.status: RunStatus | None = None

    @property
    def run_id(self) -> str:
        return self._sink.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self._sink.log_metrics({key: float(value) for key, value in metrics.items()}, step)

    def log_params(self, params: Mapping[str, object]) -> None:
        self._sink.log_params({key: str(value) for key, value in params.items()})

    def set_tags(self, values: Mapping[str, str]) -> None:
        self._sink.set_tags(dict(values))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under ``artifact_path``."""
        self._sink.log_artifact(Path(path), artifact_path)

    def finish(self, status: RunStatus = "FINISHED", reason: str | None = None) -> None:
        """End the run with ``status`` (a FAILED run's ``reason`` goes in a tag); later calls do nothing."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self.status is not None:
            return
        self.status = status
        if reason:
            self.set_tags({tags.FAILURE: reason})
        self._sink.finish(status)


def open_tool_run(
    kind: str,
    run_name: str,
    experiment: str,
    parent_run_id: str | None = None,
    checkpoint_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> ToolRun:
    """A new run of ``kind`` (tags.KIND_*) in the store of ``tracking_uri`` (default as training's).

    It is nested under ``parent_run_id`` (named by the user: it must be in the store), else under
    ``checkpoint_run_id`` (the training run a checkpoint records) when that run is in the store. A
    checkpoint's run in another store is recorded in ``tags.TRAINING_RUN`` of a top-level run in
    ``experiment``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    logging = LoggingConfig()
    uri = tracking_uri or resolve_tracking_uri(logging)
    bound_http_retries(logging.tracker_timeout)
    client = MlflowClient(tracking_uri=uri)
    run_tags = {tags.KIND: kind, **(extra_tags or {})}
    try:
        parent = client.get_run(parent_run_id) if parent_run_id else _find_run(client, checkpoint_run_id)
        if parent is not None:
            experiment_id = parent.info.experiment_id
            run_tags[tags.PARENT_RUN] = parent.info.run_id
        else:
            experiment_id = ensure_experiment(client, experiment, uri)
            if checkpoint_run_id is not None:
                run_tags[tags.TRAINING_RUN] = checkpoint_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    except MlflowException as exc:
        raise TrackingError(f"MLflow {uri}: {exc.message}") from None
    return ToolRun(MlflowSink(client, run.info.run_id, experiment_id, uri))


def _find_run(client: Any, run_id: str | None) -> Any:
    """The run ``run_id`` if this store has it, else None."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None
