"""Faults injected with --inject-fault: a NaN under --on-nan stop / skip, SIGKILL half-way through a
save, SIGTERM (preemption); resumes reach the uninterrupted run's losses bit for bit, at 1 and 2 ranks."""

import math
import os
import signal
import subprocess

import pytest
from mlflow import MlflowClient
from training_launch import SCHEDULE, TINY_DENSE, command, journal, losses, train

from megatron_cod.training.checkpoint import latest_iteration

pytestmark = pytest.mark.slow
ARGS = TINY_DENSE + SCHEDULE + ["--train-iters", "6"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, builtin_dataset):
    """Uninterrupted losses per world size."""
    out = {}
    for nproc in (1, 2):
        tmp = tmp_path_factory.mktemp(f"straight{nproc}")
        train(tmp, "straight", ARGS, nproc=nproc)
        out[nproc] = losses(tmp, "straight")
    return out


def test_nan_stop_names_step_and_layer_keeps_last_good_checkpoint(tmp_path, builtin_dataset):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "ckpt"
    args = [a for a in ARGS if a != "--no-mlflow"]
    proc = train(
        tmp_path,
        "nan",
        args + ["--save", str(ckpt), "--save-interval", "2", "--inject-fault", "nan@3"],
        env={"MLFLOW_TRACKING_URI": uri},
        check=False,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    middle = 4 // 2 + 1  # the layer the fault poisons
    assert "iteration 3" in lines[0] and f"layer {middle} of 4" in lines[0]
    assert latest_iteration(ckpt) == 2 and sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000002"]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("megatron_cod").experiment_id])
    assert run.info.status == "FAILED" and "iteration 3" in run.data.tags["megatron_cod.failure"]


def test_nan_skip_drops_the_update_and_logs_it(tmp_path, builtin_dataset):
    proc = train(tmp_path, "skip", ARGS + ["--inject-fault", "nan@3", "--on-nan", "skip"])
    assert "skipped the update" in proc.stderr and "iteration 3" in proc.stderr
    records = {
        e["step"]: e["metrics"] for e in journal(tmp_path, "skip") if "train/skipped_updates" in e["metrics"]
    }
    assert [records[s]["train/skipped_updates"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert math.isnan(records[3]["train/lm_loss"]) and all(
        math.isfinite(records[s]["train/lm_loss"]) for s in (4, 5, 6)
    )
    too_many = train(
        tmp_path,
        "too_many",
        ARGS + ["--inject-fault", "nan@2", "nan@3", "--on-nan", "skip", "--max-skipped-steps", "1"],
        check=False,
    )
    assert too_many.returncode == 1 and "more than --max-skipped-steps 1" in too_many.stderr


@pytest.mark.parametrize("nproc", [1, 2])
def test_kill_in_save_then_load_resumes_bitwise(tmp_path, straight, nproc):
    ckpt = str(tmp_path / "ckpt")
    assert (
        _train_killed(
            tmp_path,
            ARGS + ["--save", ckpt, "--save-interval", "2", "--inject-fault", "kill-in-save@4"],
            nproc,
        )
        != 0
    )
    assert latest_iteration(ckpt) == 2  # the half-written iteration 4 is never chosen
    train(tmp_path, "resumed", ARGS + ["--load", ckpt, "--save", ckpt], nproc=nproc)
    resumed = losses(tmp_path, "resumed")
    assert sorted(resumed) == [3, 4, 5, 6]
    assert all(resumed[s] == straight[nproc][s] for s in resumed)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_saves_exits_zero_and_resumes_bitwise(tmp_path, straight, nproc):
    ckpt = str(tmp_path / "ckpt")
    stopped = train(tmp_path, "stopped", ARGS + ["--save", ckpt, "--inject-fault", "sigterm@3"], nproc=nproc)
    assert stopped.returncode == 0 and "SIGTERM" in stopped.stdout
    assert latest_iteration(ckpt) == 3
    train(tmp_path, "resumed", ARGS + ["--load", ckpt, "--save", ckpt], nproc=nproc)
    resumed = losses(tmp_path, "resumed")
    assert sorted(resumed) == [4, 5, 6] and all(resumed[s] == straight[nproc][s] for s in resumed)


def _train_killed(tmp_path, args, nproc):
    """Run a job that SIGKILLs itself: output to a file (helpers megatron's save forked may outlive it and
    hold a pipe open), in its own session so those helpers are cleaned up afterwards."""
    cmd = command(tmp_path, "killed", args, nproc)
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        code = proc.wait(timeout=300)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return code
