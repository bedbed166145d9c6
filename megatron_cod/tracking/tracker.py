"""The one tracking object every command uses: the run directory's journal plus MLflow / W&B.

The journal (metrics.jsonl + tracking.json + status.json in the run directory) is written in the
calling thread and is complete by construction. MLflow and W&B sit behind background workers
(``worker.BackgroundSink``): a slow, unreachable or dying server never blocks the caller, and what
did not reach it is replayed later from the journal by ``cod-sync``. Even opening MLflow's run
happens there: training starts at once, and only the first question for the run's id waits (boundedly).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import tags
from megatron_cod.tracking.journal import JOURNAL_NAME, JsonlJournal
from megatron_cod.tracking.mlflow_sink import MlflowSink, bound_http_retries, resolve_tracking_uri
from megatron_cod.tracking.sink import RUN_STATUSES, RunStatus, TrackingError
from megatron_cod.tracking.wandb_sink import WandbSink, import_wandb
from megatron_cod.tracking.worker import BackgroundSink

RUN_DIR_TAG = tags.RUN_DIR


def _as_text(values: Mapping[str, object]) -> dict[str, str]:
    return {str(key): str(value) for key, value in values.items()}


class Tracker:
    """Create with Tracker.start on the one rank that logs; other ranks use NullTracker."""

    def __init__(
        self,
        run_dir: Path,
        journal: JsonlJournal | None,
        remotes: list[BackgroundSink],
        drain_timeout: float,
        open_timeout: float,
    ) -> None:
        self.run_dir = run_dir
        self._journal = journal
        self._remotes = remotes
        self._drain_timeout = drain_timeout
        self._open_timeout = open_timeout
        # whether the one bounded wait for MLflow's run (and the check of its open error) has happened
        self._mlflow_settled = False
        self.status: RunStatus | None = None
        self.undelivered: dict[str, int] = {}

    @classmethod
    def start(
        cls,
        cfg: LoggingConfig,
        run_dir: str | os.PathLike[str],
        params: dict[str, object],
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        """Open the journal and every remote backend `cfg` enables; params are typically the flat config.

        Returns without waiting for MLflow: its run is opened by the background worker, which records
        it in the journal as soon as it exists. The first read of run_id (experiment_id, tracking_uri,
        ui_hint) waits at most cfg.tracker_timeout for it, later reads never wait; ask as late as you
        can so the open overlaps with other work. An unreachable store is a warning, not an error; a
        configuration error the store reports (a deleted experiment) is raised by that first read.
        """
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        run_name = cfg.mlflow_run_name or run_dir.name
        text_params = _as_text(params)
        text_tags = {RUN_DIR_TAG: str(run_dir), **_as_text(tags or {})}
        use_wandb = cfg.wandb_project is not None and cfg.wandb_mode != "disabled"
        if use_wandb:
            import_wandb()  # fail before any run is created elsewhere
        journal = JsonlJournal(run_dir) if cfg.journal else None
        if journal is not None:
            journal.describe_run(
                cfg.mlflow_experiment, run_name, resolve_tracking_uri(cfg) if cfg.mlflow else None
            )
            journal.log_params(text_params)
            journal.set_tags(text_tags)
        remotes: list[BackgroundSink] = []
        if cfg.mlflow:
            bound_http_retries(cfg.tracker_timeout)

            def open_mlflow() -> MlflowSink:
                sink = MlflowSink.start(cfg, run_name, text_params, text_tags)
                if journal is not None:
                    # at once, so cod-sync completes this run rather than creating another one
                    journal.record_mlflow_run(sink.tracking_uri, sink.experiment_id, sink.run_id)
                return sink

            remotes.append(BackgroundSink("mlflow", open_mlflow, cfg.tracker_queue_size, str(run_dir)))
        if use_wandb:

            def open_wandb() -> WandbSink:
                return WandbSink.start(cfg, run_dir, run_name, text_params, text_tags)

            remotes.append(BackgroundSink("wandb", open_wandb, cfg.tracker_queue_size, str(run_dir)))
        return cls(run_dir, journal, remotes, cfg.tracker_drain_timeout, cfg.tracker_timeout)

    def _remote(self, name: str) -> BackgroundSink | None:
        return next((r for r in self._remotes if r.name == name), None)

    def _check_open(self) -> None:
        if self.status is not None:
            raise RuntimeError(f"tracker already finished with status {self.status}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics; values may be any float-convertible scalar (ints, 0-d tensors)."""
        self._check_open()
        values = {str(key): float(value) for key, value in metrics.items()}
        if self._journal is not None:
            self._journal.log_metrics(values, step)
        for remote in self._remotes:
            remote.submit("log_metrics", values, step)

    def log_params(self, params: dict[str, object]) -> None:
        self._check_open()
        text = _as_text(params)
        if self._journal is not None:
            self._journal.log_params(text)
        for remote in self._remotes:
            remote.submit("log_params", text)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._check_open()
        text = _as_text(tags)
        if self._journal is not None:
            self._journal.set_tags(text)
        for remote in self._remotes:
            remote.submit("set_tags", text)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file or a directory (its contents) under `artifact_path` in the run's artifacts."""
        self._check_open()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        if self._journal is not None:
            self._journal.log_artifact(path, artifact_path)
        for remote in self._remotes:
            remote.submit("log_artifact", path, artifact_path)

    def finish(self, status: RunStatus = "FINISHED", reason: str | None = None) -> None:
        """End the run with `status` (and a FAILED run's reason); later calls do nothing.

        Waits at most the drain timeout for the remote backends, then says what they still lack.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self.status is not None:
            return
        if reason:
            self.set_tags({tags.FAILURE: reason})
        self.status = status
        if self._journal is not None:
            self._journal.finish(status, reason)
        for remote in self._remotes:
            missing = remote.close(status, self._drain_timeout)
            if self._unraised_config_error(remote) is not None:
                # nobody asked for the run id, so the error was never raised: say it, replaying cannot help
                print(f"[megatron_cod] warning: tracker {remote.name}: {remote.open_error}", file=sys.stderr)
            elif missing or remote.error is not None:
                self.undelivered[remote.name] = missing
        self._mlflow_settled = True  # the worker is done (or given up on): nothing left to wait for
        if self.undelivered:
            lacking = ", ".join(f"{name} ({n} calls)" for name, n in self.undelivered.items())
            hint = (
                f"replay the journal with `cod-sync {self.run_dir}`"
                if self._journal is not None
                else "the journal was off (--no-journal), so they cannot be replayed"
            )
            print(f"[megatron_cod] tracking incomplete in {lacking}: {hint}", file=sys.stderr, flush=True)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every remote backend has processed what was queued so far (tests, checkpoints)."""
        for remote in self._remotes:
            remote.flush(timeout)

    def _unraised_config_error(self, remote: BackgroundSink) -> TrackingError | None:
        """The store's configuration error (TrackingError) at MLflow's open, if not raised yet."""
        error = remote.open_error
        unraised = remote.name == "mlflow" and not self._mlflow_settled
        return error if unraised and isinstance(error, TrackingError) else None

    @property
    def _mlflow(self) -> MlflowSink | None:
        """MLflow's sink once its run is open. The first call waits at most the open timeout (and raises
        the store's configuration error, ending the run FAILED); later calls never wait."""
        remote = self._remote("mlflow")
        if remote is None:
            return None
        if not self._mlflow_settled:
            remote.wait_open(self._open_timeout)
            error = self._unraised_config_error(remote)
            self._mlflow_settled = True
            if error is not None:
                self._remotes.remove(remote)
                self.finish("FAILED", f"{type(error).__name__}: {error}")
                raise error
        sink = remote.sink
        return sink if isinstance(sink, MlflowSink) else None

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


class NullTracker:
    """What ranks that do not log get: the Tracker interface, doing nothing."""

    run_dir: Path | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    status: RunStatus | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict[str, object]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: RunStatus = "FINISHED", reason: str | None = None) -> None:
        self.status = status

    def flush(self, timeout: float = 30.0) -> None:
        pass

    def ui_hint(self) -> str:
        return ""
