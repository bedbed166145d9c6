"""SIGTERM (--exit-signal-handler, on by default): finish the iteration, save, exit 0, mark the run KILLED."""

import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient
from training_launch import SCHEDULE, TINY_MOE

from megatron_cod.training.checkpoint import latest_iteration


def test_sigterm_saves_a_checkpoint_and_marks_the_run_killed(tmp_path, builtin_dataset):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    args = [a for a in SCHEDULE if a != "--no-mlflow"]
    cmd = [
        sys.executable,
        "-m",
        "megatron_cod.training",
        *TINY_MOE,
        *args,
        "--train-iters",
        "500",
        "--save",
        str(ckpt),
        "--output-dir",
        str(tmp_path / "runs"),
        "--mlflow-run-name",
        "doomed",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    journal = tmp_path / "runs" / "doomed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]  # a preempted job that saved exits cleanly, like megatron
    assert "exiting after iteration" in out and "SIGTERM" in out
    saved = latest_iteration(ckpt)
    logged = len(journal.read_text().splitlines())
    assert saved is not None and 3 <= saved == logged < 500
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("megatron_cod").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["checkpoint.iteration"] == str(saved)
