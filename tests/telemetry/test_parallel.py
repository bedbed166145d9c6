"""TP2, PP2, EP2 and DP2 (distributed optimizer) report the same telemetry as the single-rank run.

Two subprocesses (gloo): telemetry_parallel_worker.py as a world of one writes the reference
values and the weights (megatron dist checkpoints), then under torchrun with 2 ranks it loads those
weights into each layout and writes what every rank's end_step returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("telemetry_parallel_worker.py")
LAYOUT_MODEL = {"tp2": "dense", "pp2": "moe", "ep2": "moe", "dp2_distopt": "dense"}


def _run(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("telemetry_parallel")
    _run([sys.executable, str(WORKER), "reference", str(work)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          str(WORKER), "parallel", str(work)])
    return work


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUT_MODEL))
def test_parallel_layout_matches_single_rank(results, layout):
    want = json.loads((results / f"reference_{LAYOUT_MODEL[layout]}.json").read_text())
    families = {k.split("/")[0] for k in want}
    assert families == ({"depth", "attn", "weights", "moe"} if LAYOUT_MODEL[layout] == "moe"
                        else {"depth", "attn", "weights"})
    for rank in (0, 1):
        got = json.loads((results / f"{layout}_rank{rank}.json").read_text())
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), (rank, key)
