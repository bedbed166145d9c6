"""tools/gpu_smoke.sh refuses at once, with one line and exit 2, where there is no CUDA GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu_smoke.sh"


def _run(tmp: Path, nvidia_smi_exit: int) -> tuple[subprocess.CompletedProcess, float]:
    # a stand-in nvidia-smi first on PATH decides what the script sees, whatever this machine has
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\nexit {nvidia_smi_exit}\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - start


def test_refuses_without_a_gpu_at_once(tmp_path):
    proc, seconds = _run(tmp_path, nvidia_smi_exit=9)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr
    assert seconds < 2  # nothing imported, nothing built


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_refuses_when_torch_has_no_cuda(tmp_path):
    proc, _ = _run(tmp_path, nvidia_smi_exit=0)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "torch.cuda" in proc.stderr
