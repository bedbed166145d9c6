"""Running one sweep run: its config file, the training command (python or torchrun, the same entry
point as cod-train), the child's output passed through with a progress prefix, and Slurm scripts."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from megatron_cod.config import ExperimentConfig
from megatron_cod.launch.slurm import SlurmJob, render_sbatch
from megatron_cod.sweep.spec import MemberRun
from megatron_cod.tracking import tags

CONFIG_NAME = "config.yaml"


def run_config(run: MemberRun, sweep: str, directory: Path, uri: str) -> ExperimentConfig:
    """The member's config plus where this run writes and how it is tagged (bookkeeping only)."""
    return run.config.with_overrides(
        {
            "logging.output_dir": str(directory / "runs"),
            "logging.mlflow_run_name": f"{sweep}-{run.member.id}-s{run.seed}",
            "logging.mlflow_tracking_uri": uri,
            "logging.run_tags": [
                *run.config.logging.run_tags,
                f"{tags.SWEEP}={sweep}",
                f"{tags.SWEEP_MEMBER}={run.member.id}",
            ],
            "checkpoint.save": str(directory / "checkpoints"),
        }
    )


def training_command(config_path: Path, nproc: int, resume: bool) -> list[str]:
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "megatron_cod.training", "--config", str(config_path)]
    if resume:
        cmd += ["--load", str(config_path.parent / "checkpoints")]
    return cmd


def child_env(uri: str) -> dict[str, str]:
    # every child (training, analysis) writes to the sweep's store
    # megatron and torch deprecation warnings would drown the progress lines
    return {
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
    }


def run_streamed(cmd: list[str], env: dict[str, str], prefix: str, log_path: Path) -> int:
    """Run `cmd`, echo each output line behind `prefix` and keep all of it in `log_path`."""
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None  # stdout=PIPE
        try:
            for line in proc.stdout:
                log.write(line)
                if line.strip():
                    print(f"{prefix} {line.rstrip()}", flush=True)
            return proc.wait()
        except BaseException:
            # Ctrl-C or SIGTERM of the sweep: let the child checkpoint and stop, so it can be resumed
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise


def write_slurm(run: MemberRun, sweep: str, config_path: Path, nproc: int, resume: bool, uri: str) -> Path:
    """The run's sbatch script, from the same template as examples/slurm (one node, ``nproc`` GPUs)."""
    directory = config_path.parent
    training_args = ["--config", str(config_path)]
    if resume:
        training_args += ["--load", str(directory / "checkpoints")]
    job = SlurmJob(
        job_name=f"{sweep}-{run.member.id}-s{run.seed}",
        nodes=1,
        gpus_per_node=nproc,
        training_args=tuple(training_args),
        output=f"{directory}/slurm-%j.out",
        host_python=sys.executable,
        env={"MLFLOW_TRACKING_URI": uri},
        description=f"cod-sweep {sweep}: member {run.member.id}, seed {run.seed}",
    )
    script = directory / "job.sbatch"
    script.write_text(render_sbatch(job))
    return script
