"""The one tracking object a training run uses: fans each call out to MLflow, W&B and the JSONL journal."""

from __future__ import annotations

import os
from pathlib import Path

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import tags
from megatron_cod.tracking.journal import JOURNAL_NAME, JsonlJournal
from megatron_cod.tracking.mlflow_sink import MlflowSink
from megatron_cod.tracking.sink import RUN_STATUSES, RunStatus, Sink
from megatron_cod.tracking.wandb_sink import WandbSink, import_wandb

RUN_DIR_TAG = tags.RUN_DIR


def _as_text(values: dict[str, object]) -> dict[str, str]:
    return {str(key): str(value) for key, value in values.items()}


class Tracker:
    """Create with Tracker.start on the one rank that logs (the caller picks it)."""

    def __init__(self, run_dir: Path, sinks: list[Sink], mlflow: MlflowSink | None) -> None:
        self.run_dir = run_dir
        self._sinks = sinks
        self._mlflow = mlflow
        self.status: RunStatus | None = None

    @classmethod
    def start(
        cls,
        cfg: LoggingConfig,
        run_dir: str | os.PathLike[str],
        params: dict[str, object],
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        """Open every sink `cfg` enables; params are typically ExperimentConfig.to_flat_dict()."""
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        run_name = cfg.mlflow_run_name or run_dir.name
        text_params = _as_text(params)
        text_tags = {RUN_DIR_TAG: str(run_dir), **_as_text(tags or {})}
        use_wandb = cfg.wandb_project is not None and cfg.wandb_mode != "disabled"
        if use_wandb:
            import_wandb()  # fail before any run is created elsewhere
        sinks: list[Sink] = []
        mlflow = None
        try:
            if cfg.mlflow:
                mlflow = MlflowSink.start(cfg, run_name, text_params, text_tags)
                sinks.append(mlflow)
            if use_wandb:
                sinks.append(WandbSink.start(cfg, run_dir, run_name, text_params, text_tags))
            if cfg.journal:
                sinks.append(JsonlJournal(run_dir))
        except BaseException:
            for sink in sinks:
                sink.finish("FAILED")
            raise
        return cls(run_dir, sinks, mlflow)

    def _check_open(self) -> None:
        if self.status is not None:
            raise RuntimeError(f"tracker already finished with status {self.status}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics; values may be any float-convertible scalar (ints, 0-d tensors)."""
        self._check_open()
        values = {str(key): float(value) for key, value in metrics.items()}
        for sink in self._sinks:
            sink.log_metrics(values, step)

    def log_params(self, params: dict[str, object]) -> None:
        self._check_open()
        for sink in self._sinks:
            sink.log_params(_as_text(params))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._check_open()
        for sink in self._sinks:
            sink.set_tags(_as_text(tags))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file or a directory (its contents) under `artifact_path` in the run's artifacts."""
        self._check_open()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        for sink in self._sinks:
            sink.log_artifact(path, artifact_path)

    def finish(self, status: RunStatus = "FINISHED") -> None:
        """Close every sink with `status`; later calls do nothing, so explicit and automatic ends can mix."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self.status is not None:
            return
        self.status = status
        for sink in self._sinks:
            sink.finish(status)

    @property
    def run_id(self) -> str | None:
        return self._mlflow.run_id if self._mlflow else None

    @property
    def experiment_id(self) -> str | None:
        return self._mlflow.experiment_id if self._mlflow else None

    @property
    def tracking_uri(self) -> str | None:
        return self._mlflow.tracking_uri if self._mlflow else None

    def ui_hint(self) -> str:
        """How to look at this run: the `mlflow ui` command for its store, or the journal path."""
        if self._mlflow is not None:
            return self._mlflow.ui_hint()
        return f"metrics journal: {self.run_dir / JOURNAL_NAME}"
