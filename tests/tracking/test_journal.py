"""The JSONL journal and the Tracker's own bookkeeping, without MLflow."""

import json
import math
import time

import pytest

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import JOURNAL_NAME, JsonlJournal, Tracker

JOURNAL_ONLY = LoggingConfig(mlflow=False)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_journal_holds_one_line_per_call_with_what_was_logged(tmp_path):
    logged = [(0, {"loss": 10.5, "lr": 0.0}), (1, {"loss": 9.25, "layer_var/layer_0": 3.0}), (5, {"loss": math.inf})]
    before = time.time()
    tracker = Tracker.start(JOURNAL_ONLY, tmp_path / "run", params={"a": 1})
    for step, metrics in logged:
        tracker.log_metrics(metrics, step)
    tracker.finish()
    after = time.time()
    records = _read(tmp_path / "run" / JOURNAL_NAME)
    assert [(r["step"], r["metrics"]) for r in records] == logged
    times = [r["time"] for r in records]
    assert before <= times[0] <= times[1] <= times[2] <= after


def test_journal_converts_scalars_to_floats(tmp_path):
    tracker = Tracker.start(JOURNAL_ONLY, tmp_path, params={})
    tracker.log_metrics({"tokens": 4096, "flag": True}, step=3)
    tracker.finish()
    (record,) = _read(tmp_path / JOURNAL_NAME)
    assert record["metrics"] == {"tokens": 4096.0, "flag": 1.0}
    assert all(isinstance(v, float) for v in record["metrics"].values())


def test_journal_appends_when_a_run_resumes(tmp_path):
    first = JsonlJournal(tmp_path)
    first.log_metrics({"loss": 2.0}, 1)
    first.finish("KILLED")
    second = JsonlJournal(tmp_path)
    second.log_metrics({"loss": 1.0}, 2)
    second.finish("FINISHED")
    assert [r["step"] for r in _read(tmp_path / JOURNAL_NAME)] == [1, 2]


def test_finish_is_idempotent_and_closes_the_tracker(tmp_path):
    tracker = Tracker.start(JOURNAL_ONLY, tmp_path, params={})
    tracker.finish("FAILED")
    tracker.finish("FINISHED")
    assert tracker.status == "FAILED"
    with pytest.raises(RuntimeError, match="already finished with status FAILED"):
        tracker.log_metrics({"loss": 1.0}, 0)
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.finish("DONE")


def test_tracker_without_mlflow(tmp_path):
    tracker = Tracker.start(LoggingConfig(mlflow=False, journal=False), tmp_path / "r", params={})
    assert tracker.run_id is None and tracker.tracking_uri is None and tracker.experiment_id is None
    assert tracker.ui_hint() == f"metrics journal: {(tmp_path / 'r').resolve() / JOURNAL_NAME}"
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.finish()
    assert not (tmp_path / "r" / JOURNAL_NAME).exists()


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_run_directory_records_its_status(tmp_path, status):
    from megatron_cod.tracking.journal import read_status

    tracker = Tracker.start(JOURNAL_ONLY, tmp_path / "run", params={})
    assert read_status(tmp_path / "run") == "RUNNING"
    tracker.finish(status)
    assert read_status(tmp_path / "run") == status
    assert read_status(tmp_path / "elsewhere") == "UNKNOWN"
