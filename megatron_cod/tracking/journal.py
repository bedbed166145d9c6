"""The run directory's own record of a tracked run, complete whatever happens to MLflow or W&B.

- ``metrics.jsonl``: one line per log_metrics call, ``{"step", "time", "metrics"}``, appended and flushed;
- ``tracking.json``: the run's name and experiment, params, tags, artifacts and the MLflow run it
  was sent to (rewritten atomically when one of them changes, which is rare);
- ``status.json``: RUNNING until the run ends, then FINISHED / FAILED (with the reason) / KILLED.

``cod-sync`` replays these into MLflow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.tracking.sink import RunStatus

JOURNAL_NAME = "metrics.jsonl"
STATUS_NAME = "status.json"
RECORD_NAME = "tracking.json"


def write_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """<run_dir>/status.json: how the run stands (RUNNING until it ends), for readers without a tracker."""
    record: dict[str, Any] = {"status": status, "time": time.time()}
    if reason:
        record["reason"] = reason
    write_text_atomic(Path(run_dir) / STATUS_NAME, json.dumps(record))


def read_status_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS_NAME
    if not path.is_file():
        return {"status": "UNKNOWN"}
    return dict(json.loads(path.read_text()))


def read_status(run_dir: Path) -> str:
    """The status a run directory recorded; UNKNOWN where it recorded none (older runs)."""
    return str(read_status_record(run_dir).get("status", "UNKNOWN"))


def read_record(run_dir: Path) -> dict[str, Any]:
    """tracking.json of a run directory (empty sections where it has none)."""
    path = Path(run_dir) / RECORD_NAME
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for key, empty in (("params", {}), ("tags", {}), ("artifacts", []), ("mlflow_runs", {})):
        record.setdefault(key, empty)
    return record


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / RECORD_NAME, json.dumps(record, indent=1, sort_keys=True))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The journal's records ({"step": int, "metrics": {...}, ...}); a torn last line (a crash
    mid-write) is ignored, any other damaged line is a ValueError naming it."""
    path = Path(run_dir) / JOURNAL_NAME
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["step"], record["metrics"] = int(record["step"]), dict(record["metrics"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not a journal record") from None
        out.append(record)
    return out


class JsonlJournal:
    """Writes the three files above; every call completes before it returns.

    tracking.json is updated under a lock: the MLflow worker thread records its run while the
    training thread may be adding params or tags.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / JOURNAL_NAME
        self._file = self.path.open("a", encoding="utf-8")
        self._record = read_record(self.run_dir)
        self._record_lock = threading.Lock()
        write_status(self.run_dir, "RUNNING")

    def _update_record(self, change: Callable[[dict[str, Any]], object]) -> None:
        with self._record_lock:
            change(self._record)
            write_record(self.run_dir, self._record)

    def describe_run(self, experiment: str, run_name: str, tracking_uri: str | None) -> None:
        self._update_record(
            lambda record: record.update(experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)
        )

    def record_mlflow_run(self, tracking_uri: str, experiment_id: str, run_id: str) -> None:
        """The MLflow run this directory's calls went to, so cod-sync completes it rather than a new one."""
        entry = {"run_id": run_id, "experiment_id": experiment_id}
        self._update_record(lambda record: record["mlflow_runs"].update({tracking_uri: entry}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), "metrics": metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_params(self, params: dict[str, str]) -> None:
        self._update_record(lambda record: record["params"].update(params))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._update_record(lambda record: record["tags"].update(tags))

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        entry = [str(Path(path).resolve()), artifact_path]
        if entry not in self._record["artifacts"]:
            self._update_record(lambda record: record["artifacts"].append(entry))

    def finish(self, status: RunStatus, reason: str | None = None) -> None:
        self._file.close()
        write_status(self.run_dir, status, reason)
