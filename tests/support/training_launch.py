"""Run megatron_cod training in subprocesses (python or torchrun) and read back what it logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import warm_launch

TINY_MOE = [
    "--num-layers",
    "4",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--num-experts",
    "4",
    "--moe-ffn-hidden-size",
    "64",
    "--seq-length",
    "64",
]
TINY_DENSE = [
    "--num-layers",
    "4",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--ffn-hidden-size",
    "128",
    "--seq-length",
    "64",
]
# --norm-placement variants of the tiny models (Mix-LN: layers 1-2 Post-LN, 3-4 Pre-LN).
NORM_PLACEMENTS = {
    "pre": [],
    "post": ["--norm-placement", "post"],
    "peri": ["--norm-placement", "peri", "--peri-ln-embedding-norm"],
    "mix": ["--norm-placement", "mix", "--mix-ln-alpha", "0.5"],
}
SCHEDULE = [
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--lr",
    "3e-3",
    "--min-lr",
    "3e-4",
    "--lr-warmup-iters",
    "1",
    "--eval-iters",
    "0",
    "--no-telemetry",
    "--no-mlflow",
]


def command(tmp: Path, name: str, args: list[str], nproc: int = 1) -> list[str]:
    """The fresh-interpreter command line of train(): ``python -m``, or torchrun for nproc > 1."""
    cmd = [sys.executable]
    if nproc > 1:
        cmd += [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(warm_launch.free_port()),
        ]
    return [*cmd, "-m", "megatron_cod.training", *_tool_args(tmp, name, args)]


def _tool_args(tmp: Path, name: str, args: list[str]) -> list[str]:
    return [*args, "--output-dir", str(tmp / "runs"), "--mlflow-run-name", name]


def train(
    tmp: Path,
    name: str,
    args: list[str],
    nproc: int = 1,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    warm: bool = True,
) -> subprocess.CompletedProcess:
    """Run one training job with --output-dir tmp/runs and --mlflow-run-name name: forked from the warm
    server (warm_launch), or with ``warm=False`` as a fresh ``python -m`` (torchrun for nproc > 1)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if warm:
        proc = warm_launch.run(
            "megatron_cod.training",
            _tool_args(tmp, name, args),
            cwd=tmp,
            env=full_env,
            nproc=nproc,
            timeout=timeout,
        )
    else:
        proc = subprocess.run(
            command(tmp, name, args, nproc),
            cwd=tmp,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"training {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def journal(tmp: Path, name: str) -> list[dict]:
    path = tmp / "runs" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(tmp: Path, name: str) -> dict[int, float]:
    return {
        e["step"]: e["metrics"]["train/lm_loss"]
        for e in journal(tmp, name)
        if "train/lm_loss" in e["metrics"]
    }
