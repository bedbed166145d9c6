"""Local JSONL metrics journal: one line per log_metrics call, readable without any tracking server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.tracking.sink import RunStatus

JOURNAL_NAME = "metrics.jsonl"
STATUS_NAME = "status.json"


def write_status(run_dir: Path, status: str) -> None:
    """<run_dir>/status.json: how the run stands (RUNNING until it ends), for readers without a tracker."""
    write_text_atomic(Path(run_dir) / STATUS_NAME, json.dumps({"status": status, "time": time.time()}))


def read_status(run_dir: Path) -> str:
    """The status a run directory recorded; UNKNOWN where it recorded none (older runs)."""
    path = Path(run_dir) / STATUS_NAME
    if not path.is_file():
        return "UNKNOWN"
    return str(json.loads(path.read_text()).get("status", "UNKNOWN"))


class JsonlJournal:
    """Appends {"step": N, "time": unix_seconds, "metrics": {...}} lines to <run_dir>/metrics.jsonl.

    Appending (not truncating) keeps the history of a run resumed from a checkpoint in one file;
    each line is flushed at once so a crash loses at most the line being written.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / JOURNAL_NAME
        self._file = self.path.open("a", encoding="utf-8")
        write_status(self.run_dir, "RUNNING")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), "metrics": metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_params(self, params: dict[str, str]) -> None:
        """The journal holds metrics only; params live in the run directory's config file."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """The journal holds metrics only."""

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        """Artifacts already lie in the run directory beside the journal."""

    def finish(self, status: RunStatus) -> None:
        self._file.close()
        write_status(self.run_dir, status)
