"""MLflow backend: explicit run ids through MlflowClient, batched logging, a local sqlite store by default."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking.sink import RunStatus, TrackingError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
T = TypeVar("T")


def resolve_tracking_uri(cfg: LoggingConfig) -> str:
    """MLFLOW_TRACKING_URI, else cfg.mlflow_tracking_uri, else sqlite:///<abs cwd>/mlflow.db."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.mlflow_tracking_uri:
        return cfg.mlflow_tracking_uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


# MLflow's REST client retries a failing request 7 times with exponential backoff (minutes in all);
# a tracker that must never hold training up wants a short, bounded wait instead.
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def bound_http_retries(timeout_s: float) -> None:
    """Short HTTP timeouts and retries for MLflow's REST client, unless the user set them."""
    for key, value in {**HTTP_RETRY_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s)))}.items():
        os.environ.setdefault(key, value)


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths against the cwd), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return (Path.cwd() / uri[len(prefix) :]).resolve()


def default_artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go to <db dir>/mlartifacts, where `mlflow ui` run there looks."""
    db = sqlite_db_path(uri)
    return (db.parent / DEFAULT_ARTIFACT_DIR).as_uri() if db is not None else None


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MlflowSink:
    """One MLflow run, addressed by id, so several sinks in one process never share global state."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    @classmethod
    def start(
        cls, cfg: LoggingConfig, run_name: str, params: dict[str, str], tags: dict[str, str]
    ) -> MlflowSink:
        sink = cls.create(resolve_tracking_uri(cfg), cfg.mlflow_experiment, run_name)
        sink.set_tags(tags)
        sink.log_params(params)
        return sink

    @property
    def client(self) -> Any:
        return self._client

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> MlflowSink:
        """A sink for an existing run (cod-sync)."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        run = client.get_run(run_id)
        return cls(client, run_id, run.info.experiment_id, tracking_uri)

    @classmethod
    def create(cls, tracking_uri: str, experiment: str, run_name: str) -> MlflowSink:
        """A new, empty run in ``experiment`` (created if missing)."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = ensure_experiment(client, experiment, tracking_uri)
        run = client.create_run(experiment_id, run_name=run_name)
        return cls(client, run.info.run_id, experiment_id, tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_s: float | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        timestamp = int((time.time() if timestamp_s is None else timestamp_s) * 1000)
        entries = [Metric(key, value, timestamp, step) for key, value in metrics.items()]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=list(chunk))

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        limit = MAX_PARAM_VAL_LENGTH
        entries = [Param(key, _truncate(value, limit)) for key, value in params.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=list(chunk))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        limit = MAX_TAG_VAL_LENGTH
        entries = [RunTag(key, _truncate(value, limit)) for key, value in tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=list(chunk))

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: RunStatus) -> None:
        self._client.set_terminated(self.run_id, status=status)

    def ui_hint(self) -> str:
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of the active experiment ``name``, created (artifacts beside a sqlite store) if missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=default_artifact_location(uri))
        except MlflowException:
            # Another process may have created it between the lookup and the create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment '{name}' is deleted in {uri}: restore it or pick another --mlflow-experiment"
        )
    return experiment.experiment_id
