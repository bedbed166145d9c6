"""Experiment tracking: MLflow (default), Weights & Biases (optional) and a local JSONL journal."""

from megatron_cod.tracking.journal import JOURNAL_NAME, JsonlJournal
from megatron_cod.tracking.lifecycle import RunTerminated, end_state, sigterm_raises, tracked_run
from megatron_cod.tracking.mlflow_sink import resolve_tracking_uri
from megatron_cod.tracking.sink import RunStatus, TrackingError
from megatron_cod.tracking.tracker import NullTracker, Tracker

__all__ = [
    "JOURNAL_NAME",
    "JsonlJournal",
    "NullTracker",
    "RunStatus",
    "RunTerminated",
    "Tracker",
    "TrackingError",
    "end_state",
    "resolve_tracking_uri",
    "sigterm_raises",
    "tracked_run",
]
