"""cod-sync against a sqlite store: a journal-only run is replayed exactly, and a second sync adds nothing."""

import pytest
from mlflow import MlflowClient

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import NullTracker, Tracker
from megatron_cod.tracking.journal import read_record
from megatron_cod.tracking.sync import sync_run_dir
from megatron_cod.tracking.sync_cli import main as cod_sync


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _journal_run(tmp_path, status="FINISHED"):
    cfg = LoggingConfig(mlflow=False, mlflow_experiment="synced", mlflow_run_name="offline")
    tracker = Tracker.start(cfg, tmp_path / "run", params={"model.num_layers": 4}, tags={"k": "v"})
    expected = {}
    for step in range(1, 6):
        values = {"loss": 1.0 / step, f"layer/{step % 2}": step * 0.5}
        tracker.log_metrics(values, step)
        for key, value in values.items():
            expected.setdefault(key, []).append((step, value))
    (tmp_path / "run" / "plots").mkdir()
    (tmp_path / "run" / "plots" / "a.png").write_bytes(b"png")
    tracker.log_artifact(tmp_path / "run" / "plots", artifact_path="plots")
    tracker.finish(status, reason="RuntimeError: boom" if status == "FAILED" else None)
    return tmp_path / "run", expected


def test_sync_replays_a_journal_once(tmp_path):
    run_dir, expected = _journal_run(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = sync_run_dir(run_dir, uri)
    assert first.created and first.metric_values == sum(map(len, expected.values())) and first.artifacts == 1
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"
    assert client.get_experiment(run.info.experiment_id).name == "synced"
    assert run.data.params == {"model.num_layers": "4"} and run.data.tags["k"] == "v"
    for key, values in expected.items():
        assert sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, key)) == values
    assert [a.path for a in client.list_artifacts(first.run_id, "plots")] == ["plots/a.png"]
    second = sync_run_dir(run_dir, uri)
    assert (second.run_id, second.created, second.params, second.metric_values, second.artifacts,
            second.status) == (first.run_id, False, 0, 0, 0, None)
    assert read_record(run_dir)["mlflow_runs"][uri]["run_id"] == first.run_id


def test_failed_run_keeps_its_reason(tmp_path):
    run_dir, _ = _journal_run(tmp_path, status="FAILED")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=uri).get_run(sync_run_dir(run_dir, uri).run_id)
    assert run.info.status == "FAILED" and run.data.tags["megatron_cod.failure"] == "RuntimeError: boom"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cod_sync([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    run_dir, _ = _journal_run(tmp_path)
    assert cod_sync([str(run_dir)]) == 1  # ran with --no-mlflow: the store must be named
    assert "--tracking-uri" in capsys.readouterr().err


def test_null_tracker_has_the_tracker_interface():
    public = {n for n in dir(Tracker) if not n.startswith("_") and n not in ("start",)}
    assert public <= set(dir(NullTracker))
    null = NullTracker()
    null.log_metrics({"a": 1.0}, 1)
    null.finish("FAILED", reason="x")
    assert null.status == "FAILED" and null.run_id is None
