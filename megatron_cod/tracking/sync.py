"""Replay a run directory's journal into MLflow: what the live tracker could not deliver, nothing twice.

The journal (see ``journal.py``) holds every call a run made. Syncing finds the MLflow run the
directory already fed (``tracking.json`` remembers one per tracking URI) or creates it, then adds
only what that run lacks: params it does not have, every tag, metric values at (key, step) pairs it
does not have, artifacts it does not list, and the final status. Running it again adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_cod.tracking.journal import (
    JOURNAL_NAME,
    RECORD_NAME,
    read_metrics,
    read_record,
    read_status_record,
    write_record,
)
from megatron_cod.tracking.mlflow_sink import MlflowSink
from megatron_cod.tracking.sink import RUN_STATUSES, TrackingError


@dataclass
class SyncReport:
    run_id: str
    tracking_uri: str
    created: bool
    params: int = 0
    metric_values: int = 0
    artifacts: int = 0
    status: str | None = None

    def summary(self) -> str:
        what = "created" if self.created else "completed"
        return (
            f"{what} MLflow run {self.run_id} in {self.tracking_uri}: +{self.params} params, "
            f"+{self.metric_values} metric values, +{self.artifacts} artifacts"
            + (f", status {self.status}" if self.status else "")
        )


def _existing_run(uri: str, record: dict[str, Any]) -> MlflowSink | None:
    from mlflow.exceptions import MlflowException

    known = record["mlflow_runs"].get(uri)
    if not known:
        return None
    try:
        return MlflowSink.attach(uri, known["run_id"])
    except MlflowException:
        return None  # the run was deleted from that store: start a fresh one


def _missing_metrics(
    sink: MlflowSink, lines: list[dict[str, Any]]
) -> dict[int, tuple[float, dict[str, float]]]:
    """{step: (time, {key: value})} of the journal's values whose (key, step) the run does not hold."""
    present = set(sink.client.get_run(sink.run_id).data.metrics)
    have: dict[str, set[int]] = {
        key: {m.step for m in sink.client.get_metric_history(sink.run_id, key)} for key in present
    }
    out: dict[int, tuple[float, dict[str, float]]] = {}
    for line in lines:
        step = int(line["step"])
        for key, value in line["metrics"].items():
            if step in have.get(key, ()):
                continue
            have.setdefault(key, set()).add(step)
            out.setdefault(step, (float(line.get("time", 0.0)), {}))[1][key] = float(value)
    return out


def _artifact_paths(sink: MlflowSink, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in sink.client.list_artifacts(sink.run_id, path):
        out |= _artifact_paths(sink, info.path) if info.is_dir else {info.path}
    return out


def _artifact_files(source: Path, artifact_path: str | None) -> list[tuple[Path, str | None, str]]:
    """(file, the artifact directory to upload it under, the path it gets in the run)."""
    prefix = f"{artifact_path}/" if artifact_path else ""
    if source.is_file():
        return [(source, artifact_path, prefix + source.name)]
    out = []
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = file.relative_to(source)
        parent = "/".join(filter(None, [artifact_path, *rel.parts[:-1]])) or None
        out.append((file, parent, prefix + rel.as_posix()))
    return out


def sync_run_dir(run_dir: str | Path, tracking_uri: str) -> SyncReport:
    """Bring the MLflow run of ``run_dir`` in ``tracking_uri`` up to its journal; see the module doc."""
    run_dir = Path(run_dir)
    if not (run_dir / JOURNAL_NAME).is_file() and not (run_dir / RECORD_NAME).is_file():
        raise TrackingError(f"{run_dir} holds no journal ({JOURNAL_NAME} / {RECORD_NAME}): nothing to sync")
    record = read_record(run_dir)
    sink = _existing_run(tracking_uri, record)
    created = sink is None
    if sink is None:
        sink = MlflowSink.create(
            tracking_uri, record.get("experiment", "megatron_cod"), record.get("run_name", run_dir.name)
        )
        record["mlflow_runs"][tracking_uri] = {"run_id": sink.run_id, "experiment_id": sink.experiment_id}
        write_record(run_dir, record)
    report = SyncReport(sink.run_id, tracking_uri, created)

    run = sink.client.get_run(sink.run_id)
    params = {k: v for k, v in record["params"].items() if k not in run.data.params}
    if params:
        sink.log_params(params)
        report.params = len(params)
    if record["tags"]:
        sink.set_tags(record["tags"])

    for step, (time_s, values) in sorted(_missing_metrics(sink, read_metrics(run_dir)).items()):
        sink.log_metrics(values, step, timestamp_s=time_s)
        report.metric_values += len(values)

    uploaded = _artifact_paths(sink)
    for source, artifact_path in record["artifacts"]:
        path = Path(source)
        if not path.exists():
            continue
        for file, parent, name in _artifact_files(path, artifact_path):
            if name not in uploaded:
                sink.client.log_artifact(sink.run_id, str(file), parent)
                report.artifacts += 1

    status = read_status_record(run_dir).get("status")
    if status in RUN_STATUSES and run.info.status != status:
        sink.finish(status)
        report.status = status
    return report
