"""Experiment tracking: MLflow (default), Weights & Biases (optional) and a local JSONL journal.

Training runs go through Tracker (journal + background backends); the runs of the other commands
(analysis, eval, export, comparison) through open_tool_run. Both end through tracked_run.
"""

from megatron_cod.tracking.journal import JOURNAL_NAME, JsonlJournal
from megatron_cod.tracking.lifecycle import RunTerminated, end_state, sigterm_raises, tracked_run
from megatron_cod.tracking.mlflow_sink import resolve_tracking_uri
from megatron_cod.tracking.sink import RunStatus, TrackingError
from megatron_cod.tracking.tool_run import ToolRun, open_tool_run
from megatron_cod.tracking.tracker import NullTracker, Tracker

__all__ = [
    "JOURNAL_NAME",
    "JsonlJournal",
    "NullTracker",
    "RunStatus",
    "RunTerminated",
    "ToolRun",
    "Tracker",
    "TrackingError",
    "end_state",
    "open_tool_run",
    "resolve_tracking_uri",
    "sigterm_raises",
    "tracked_run",
]
