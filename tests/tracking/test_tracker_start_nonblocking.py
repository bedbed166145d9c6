"""Tracker.start never waits for MLflow: its run is opened in the background, and only the first read
of the run id waits for it (at most tracker_timeout), against a real sqlite store."""

import sqlite3
import threading
import time

import pytest
from mlflow import MlflowClient

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import Tracker
from megatron_cod.tracking.journal import JsonlJournal, read_record
from megatron_cod.tracking.mlflow_sink import MlflowSink
from megatron_cod.tracking.tracker import RUN_DIR_TAG
from megatron_cod.tracking.worker import BackgroundSink

TIMEOUT = 60.0  # the bound of the first wait; generous so a slow machine cannot fail the test


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the schema, so only the lock below can slow it
    return db, uri


def test_start_returns_while_the_store_is_locked_and_run_id_waits_for_it(store, tmp_path):
    db, uri = store
    cfg = LoggingConfig(mlflow_tracking_uri=uri, mlflow_experiment="nonblocking", tracker_timeout=TIMEOUT)
    # Another writer holds the database: MLflow's open cannot create the run until it lets go.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        tracker = Tracker.start(cfg, tmp_path / "run", params={"a": 1})
        returned_after = time.monotonic() - began
        assert read_record(tmp_path / "run")["mlflow_runs"] == {}  # no run yet: start did not wait
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert returned_after < 1.0
    run_id = tracker.run_id  # the first need waits for the open, which can now finish
    assert run_id is not None
    tracker.finish()
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.tags[RUN_DIR_TAG] == str((tmp_path / "run").resolve()) and run.data.params == {"a": "1"}
    assert run.info.status == "FINISHED"
    recorded = read_record(tmp_path / "run")["mlflow_runs"][uri]
    assert recorded == {"run_id": run_id, "experiment_id": run.info.experiment_id}


def test_first_read_waits_at_most_the_timeout_and_later_reads_never_wait(store, tmp_path):
    _, uri = store
    release = threading.Event()

    def slow_open() -> MlflowSink:
        release.wait()
        return MlflowSink.create(uri, "slow", "slow-run")

    remote = BackgroundSink("mlflow", slow_open, queue_size=100, run_dir=str(tmp_path))
    tracker = Tracker(tmp_path, JsonlJournal(tmp_path), [remote], drain_timeout=TIMEOUT, open_timeout=0.5)
    began = time.monotonic()
    assert tracker.run_id is None  # not open within the bound: the first read gives up after it
    first = time.monotonic() - began
    assert 0.5 <= first < 5.0
    began = time.monotonic()
    assert tracker.run_id is None and tracker.ui_hint().startswith("metrics journal:")
    assert time.monotonic() - began < 0.1  # later reads do not wait again
    release.set()
    remote.wait_open(TIMEOUT)
    assert tracker.run_id == remote.sink.run_id  # known once open, without waiting
    tracker.finish()
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.status == "FINISHED"


def test_a_configuration_error_nobody_asked_about_is_one_warning_at_the_end(store, tmp_path, capsys):
    _, uri = store
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("deleted-before-the-run"))
    cfg = LoggingConfig(mlflow_tracking_uri=uri, mlflow_experiment="deleted-before-the-run")
    tracker = Tracker.start(cfg, tmp_path / "run", params={})
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.finish()  # the run id was never read, so the store's error was never raised
    lines = [line for line in capsys.readouterr().err.splitlines() if "[megatron_cod]" in line]
    assert len(lines) == 1 and "'deleted-before-the-run' is deleted" in lines[0]
    assert tracker.run_id is None and tracker.undelivered == {}
