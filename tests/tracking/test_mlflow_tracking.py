"""Tracker against a real MLflow sqlite store (one store shared by this module: creating one takes seconds)."""

import json
import os
import signal
import time

import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH

from megatron_cod.config import ExperimentConfig, LoggingConfig
from megatron_cod.tracking import JOURNAL_NAME, RunTerminated, Tracker, TrackingError, tracked_run
from megatron_cod.tracking.tracker import RUN_DIR_TAG


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema once
    return root, uri


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _cfg(uri, experiment="tests", **kwargs):
    return LoggingConfig(mlflow_tracking_uri=uri, mlflow_experiment=experiment, **kwargs)


def _run(uri, tracker):
    return MlflowClient(tracking_uri=uri).get_run(tracker.run_id)


def test_params_tags_metrics_artifacts_and_journal(store, tmp_path):
    _, uri = store
    exp = ExperimentConfig.from_dict({"model": {"num_layers": 4}, "logging": {"mlflow_run_name": "first"}})
    params = exp.to_flat_dict()
    tracker = Tracker.start(_cfg(uri, mlflow_run_name="first"), tmp_path / "run", params, tags={"purpose": "test"})
    logged = {step: {"loss": 10.0 / (step + 1), "layer_var/layer_0": float(step * step)} for step in range(5)}
    with tracked_run(tracker):
        for step, metrics in logged.items():
            tracker.log_metrics(metrics, step)
        wide = {f"telemetry/m{i}": i / 7 for i in range(MAX_METRICS_PER_BATCH + 500)}
        tracker.log_metrics(wide, step=5)
        tracker.log_params({"extra.long": "x" * (MAX_PARAM_VAL_LENGTH + 100)})
        tracker.set_tags({"phase": "done"})
        (tmp_path / "config.yaml").write_text("model: {}\n")
        plots = tmp_path / "plots"
        plots.mkdir()
        (plots / "a.png").write_bytes(b"png")
        tracker.log_artifact(tmp_path / "config.yaml")
        tracker.log_artifact(plots, artifact_path="plots")

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.info.experiment_id == tracker.experiment_id and tracker.tracking_uri == uri
    long_value = run.data.params.pop("extra.long")
    assert run.data.params == {key: str(value) for key, value in params.items()}
    assert len(long_value) == MAX_PARAM_VAL_LENGTH and long_value.endswith("...")
    assert run.data.tags["purpose"] == "test" and run.data.tags["phase"] == "done"
    assert run.data.tags[RUN_DIR_TAG] == str((tmp_path / "run").resolve())
    for key in ("loss", "layer_var/layer_0"):
        history = sorted(client.get_metric_history(tracker.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, logged[s][key]) for s in range(5)]
    assert len([k for k in run.data.metrics if k.startswith("telemetry/")]) == len(wide)
    assert run.data.metrics[f"telemetry/m{len(wide) - 1}"] == pytest.approx((len(wide) - 1) / 7)
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == ["config.yaml", "plots"]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/a.png"]

    records = [json.loads(line) for line in (tmp_path / "run" / JOURNAL_NAME).read_text().splitlines()]
    assert [(r["step"], r["metrics"]) for r in records] == [*logged.items(), (5, wide)]


def test_exception_marks_the_run_failed(store, tmp_path):
    _, uri = store
    tracker = Tracker.start(_cfg(uri), tmp_path, params={})
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(tracker):
            tracker.log_metrics({"loss": 1.0}, 0)
            raise RuntimeError("boom")
    assert _run(uri, tracker).info.status == "FAILED"


def test_sigterm_marks_the_run_killed_and_restores_the_handler(store, tmp_path):
    _, uri = store
    tracker = Tracker.start(_cfg(uri), tmp_path, params={})
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated, match="SIGTERM"):
        with tracked_run(tracker):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # interrupted by the handler's exception
    assert signal.getsignal(signal.SIGTERM) is before
    assert _run(uri, tracker).info.status == "KILLED"


def test_keyboard_interrupt_marks_the_run_killed(store, tmp_path):
    _, uri = store
    tracker = Tracker.start(_cfg(uri), tmp_path, params={})
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(tracker):
            raise KeyboardInterrupt
    assert _run(uri, tracker).info.status == "KILLED"


def test_explicit_finish_inside_the_block_wins(store, tmp_path):
    _, uri = store
    tracker = Tracker.start(_cfg(uri), tmp_path, params={})
    with tracked_run(tracker, handle_sigterm=False):
        tracker.finish("KILLED")
    assert _run(uri, tracker).info.status == "KILLED"


def test_env_tracking_uri_wins_over_the_config(store, tmp_path, monkeypatch):
    _, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker.start(_cfg(f"sqlite:///{tmp_path / 'unused.db'}", experiment="env"), tmp_path / "r", {})
    tracker.finish()
    assert tracker.tracking_uri == uri
    assert _run(uri, tracker).info.status == "FINISHED"
    assert not (tmp_path / "unused.db").exists()


def test_default_store_is_sqlite_in_the_cwd_with_artifacts_beside_it(store, tmp_path, monkeypatch):
    root, _ = store
    monkeypatch.chdir(root)
    tracker = Tracker.start(LoggingConfig(mlflow_experiment="default-store"), tmp_path / "r", {})
    (tmp_path / "note.txt").write_text("hi")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.finish()
    expected_uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
    assert tracker.tracking_uri == expected_uri
    assert tracker.ui_hint() == f"mlflow ui --backend-store-uri {expected_uri}"
    assert expected_uri.startswith("sqlite:////")
    stored = list((root / "mlartifacts").rglob("note.txt"))
    assert len(stored) == 1 and tracker.run_id in stored[0].parts


def test_concurrent_trackers_keep_their_own_runs(store, tmp_path):
    _, uri = store
    a = Tracker.start(_cfg(uri), tmp_path / "a", {"who": "a"})
    b = Tracker.start(_cfg(uri), tmp_path / "b", {"who": "b"})
    for step in range(3):
        a.log_metrics({"x": 100.0 + step}, step)
        b.log_metrics({"x": 200.0 + step}, step)
    a.finish("FAILED")
    b.finish()
    client = MlflowClient(tracking_uri=uri)
    for tracker, base, status in ((a, 100.0, "FAILED"), (b, 200.0, "FINISHED")):
        values = sorted(m.value for m in client.get_metric_history(tracker.run_id, "x"))
        assert values == [base, base + 1, base + 2]
        assert client.get_run(tracker.run_id).info.status == status


def test_deleted_experiment_is_a_clear_error(store, tmp_path):
    _, uri = store
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    tracker = Tracker.start(_cfg(uri, experiment="gone"), tmp_path, {})  # does not wait for the store
    with pytest.raises(TrackingError, match="MLflow experiment 'gone' is deleted"):
        _ = tracker.run_id  # the first need of the run waits for it, and raises the store's error
    assert json.loads((tmp_path / "status.json").read_text())["status"] == tracker.status == "FAILED"
