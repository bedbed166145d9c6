"""Running one sweep run: its config file, the training command (python or torchrun, the same entry
point as cod-train), the child's output passed through with a progress prefix, and Slurm scripts."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from megatron_cod.config import ExperimentConfig
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
    directory = config_path.parent
    script = directory / "job.sbatch"
    launch = [
        shutil.which("torchrun") or "torchrun",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "megatron_cod.training",
        "--config",
        str(config_path),
    ]
    if resume:
        launch += ["--load", str(directory / "checkpoints")]
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                f"#SBATCH --job-name={sweep}-{run.member.id}-s{run.seed}",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks-per-node=1",
                f"#SBATCH --gpus-per-node={nproc}",
                f"#SBATCH --output={directory}/slurm-%j.out",
                "set -euo pipefail",
                f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}",
                f"srun {shlex.join(launch)}",
                "",
            ]
        )
    )
    return script
