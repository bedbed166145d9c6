"""Experiment tracking: MLflow (default), Weights & Biases (optional) and a local JSONL journal."""

from megatron_cod.tracking.journal import JOURNAL_NAME, JsonlJournal
from megatron_cod.tracking.lifecycle import RunTerminated, sigterm_raises, tracked_run
from megatron_cod.tracking.mlflow_sink import resolve_tracking_uri
from megatron_cod.tracking.sink import RunStatus, TrackingError
from megatron_cod.tracking.tracker import Tracker

__all__ = [
    "JOURNAL_NAME",
    "JsonlJournal",
    "RunStatus",
    "RunTerminated",
    "Tracker",
    "TrackingError",
    "resolve_tracking_uri",
    "sigterm_raises",
    "tracked_run",
]
