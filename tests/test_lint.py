"""Lint and types as part of the suite (so `.ci/run` runs them): ruff check, ruff format --check, mypy."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("cmd", [["ruff", "check", "megatron_cod"], ["ruff", "format", "--check", "megatron_cod"],
                                 ["mypy"]], ids=["ruff-check", "ruff-format", "mypy"])
def test_clean(cmd):
    proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
