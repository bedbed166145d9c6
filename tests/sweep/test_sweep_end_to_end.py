"""cod-sweep cpu_smoke for real: interrupted members resume, finished ones are skipped, seeds add runs,
and the comparison run holds the report and plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from megatron_cod.tracking import tags

pytestmark = pytest.mark.slow


def _sweep(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_cod.sweep.cli", "cpu_smoke", *args],
        cwd=tmp,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _training_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [
        r
        for r in client.search_runs(experiments, filter_string=f"tags.`{tags.SWEEP}` = 'cpu_smoke'")
        if r.data.tags.get(tags.KIND) == tags.KIND_TRAIN
    ]


def test_smoke_sweep_resume_skip_seeds_and_report(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # an interruption: both members stop cleanly after iteration 10 of 20, leaving checkpoints
    _sweep(tmp_path, "--set", "train.exit_interval=10", "--no-compare")
    first = _training_runs(client)
    assert len(first) == 2 and {r.data.tags[tags.ITERATION] for r in first} == {"10"}

    resumed = _sweep(tmp_path)
    assert resumed.stdout.count("resuming from iteration 10") == 2
    runs = _training_runs(client)
    done = [r for r in runs if r.data.tags[tags.ITERATION] == "20"]
    assert len(runs) == 4 and len(done) == 2
    assert {r.data.tags[tags.SWEEP_MEMBER] for r in done} == {"layers2", "layers4"}
    assert all(r.info.status == "FINISHED" and r.data.tags[tags.SEED] == "1234" for r in done)
    report = (tmp_path / "sweeps/cpu_smoke/comparison/report.md").read_text()
    assert "## Superseded runs" in report and report.count("(FINISHED) → `cpu_smoke-") == 2

    # the next two comparisons would go unchecked (the last invocation's is the one read back)
    again = _sweep(tmp_path, "--no-compare")
    assert "trained 0 of 2 runs" in again.stdout and len(_training_runs(client)) == 4

    seeds = _sweep(tmp_path, "--seeds", "2", "--no-compare")
    assert "trained 2 of 4 runs" in seeds.stdout
    assert "seed 2/2" in seeds.stdout
    runs = _training_runs(client)
    assert sorted(r.data.tags[tags.SEED] for r in runs if r.data.tags[tags.ITERATION] == "20") == [
        "1234",
        "1234",
        "1235",
        "1235",
    ]
    assert "trained 0 of 4 runs" in _sweep(tmp_path, "--seeds", "2").stdout

    experiments = [e.experiment_id for e in client.search_experiments()]
    comparison = client.search_runs(
        experiments,
        filter_string=f"tags.`{tags.KIND}` = 'comparison'",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert comparison.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"report.md", "variance_vs_layer.png", "last_layer_variance_vs_step.png"} <= artifacts
    report = Path(client.download_artifacts(comparison.info.run_id, "report.md", str(tmp_path))).read_text()
    assert "| layers=2 | 2 | 1234, 1235 |" in report and "| layers=4 | 2 | 1234, 1235 |" in report
