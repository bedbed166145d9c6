"""Tracking never blocks training: an MLflow server that is down, or dies mid-run, costs the run nothing,
and `cod-sync` later brings the MLflow run up to the journal, never twice. Real `mlflow server`s."""

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer, closed_port_uri
from training_launch import SCHEDULE, TINY_DENSE

from megatron_cod.tracking.journal import read_metrics, read_record
from megatron_cod.tracking.sync_cli import main as cod_sync

pytestmark = pytest.mark.slow
ARGS = [*TINY_DENSE, *[a for a in SCHEDULE if a not in ("--no-mlflow", "--no-telemetry")]]


def _train(tmp_path, name, uri, iters, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    cmd = [
        sys.executable,
        "-m",
        "megatron_cod.training",
        *ARGS,
        *extra,
        "--train-iters",
        str(iters),
        "--output-dir",
        str(tmp_path / "runs"),
        "--mlflow-run-name",
        name,
    ]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _journal_history(run_dir):
    history = {}
    for line in read_metrics(run_dir):
        for key, value in line["metrics"].items():
            history.setdefault(key, []).append((line["step"], value))
    return history


def _assert_run_equals_journal(uri, run_dir):
    record = read_record(run_dir)
    run_id = record["mlflow_runs"][uri]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    journal = _journal_history(run_dir)
    assert set(run.data.metrics) == set(journal)
    for key, expected in journal.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert got == sorted(expected), key
    assert run.data.params == record["params"]
    assert run.info.status == json.loads((run_dir / "status.json").read_text())["status"] == "FINISHED"
    return client, run_id, sum(len(v) for v in journal.values())


def test_server_down_at_start_then_sync_twice(tmp_path, builtin_dataset):
    iters = 12
    start = time.perf_counter()
    base = _train(tmp_path, "untracked", "unused", iters, extra=["--no-mlflow"])
    base.communicate(timeout=300)
    base_s = time.perf_counter() - start
    start = time.perf_counter()
    proc = _train(tmp_path, "outage", closed_port_uri(), iters)
    out, err = proc.communicate(timeout=300)
    outage_s = time.perf_counter() - start
    assert proc.returncode == 0, err[-3000:]
    assert outage_s < 1.5 * base_s + 30, (outage_s, base_s)  # generous: it must not wait on the tracker
    warnings = [line for line in err.splitlines() if "warning: tracker mlflow" in line]
    assert len(warnings) == 1 and "cod-sync" in warnings[0]
    run_dir = tmp_path / "runs" / "outage"
    steps = [line["step"] for line in read_metrics(run_dir) if "train/lm_loss" in line["metrics"]]
    assert steps == list(range(1, iters + 1))

    server = MlflowServer(tmp_path / "server").start()
    try:
        assert cod_sync([str(run_dir), "--tracking-uri", server.uri]) == 0
        client, run_id, n_values = _assert_run_equals_journal(server.uri, run_dir)
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert "config.yaml" in artifacts
        assert cod_sync([str(run_dir), "--tracking-uri", server.uri]) == 0  # a second sync adds nothing
        _, run_id_again, _ = _assert_run_equals_journal(server.uri, run_dir)
        assert run_id_again == run_id
        total = sum(len(client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics)
        assert total == n_values
    finally:
        server.stop()


def test_server_killed_mid_run_loses_nothing_after_sync(tmp_path, builtin_dataset):
    # the server dies after step 5: 95 steps left are ample to keep the run going past it
    iters = 100
    server = MlflowServer(tmp_path / "server").start()
    try:
        proc = _train(tmp_path, "dying", server.uri, iters)
        journal = tmp_path / "runs" / "dying" / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 5):
            time.sleep(0.1)
        server.stop()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "warning: tracker mlflow" in err and "cod-sync" in err
        run_dir = tmp_path / "runs" / "dying"
        uri = server.uri
        original = read_record(run_dir)["mlflow_runs"][uri]["run_id"]
        assert len(read_metrics(run_dir)) == iters
        server = MlflowServer(tmp_path / "server", port=server.port).start()
        partial = MlflowClient(tracking_uri=uri).get_run(original)
        assert partial.info.status == "RUNNING"  # the live tracker never reached the end
        assert cod_sync([str(run_dir)]) == 0  # the store the run was configured with
        _, run_id, _ = _assert_run_equals_journal(uri, run_dir)
        assert run_id == original
    finally:
        server.stop()
