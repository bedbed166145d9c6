"""Sweep files: members, seeds and validation of every member before anything trains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cod.compare.errors import CompareError
from megatron_cod.sweep.spec import load_sweep, shipped_sweeps
from megatron_cod.sweep.state import run_directory


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


def test_grid_members_seeds_and_configs(tmp_path):
    sweep = load_sweep(
        _write(
            tmp_path,
            """
base: cpu_dense_deep
set: {train.train_iters: 30}
grid: {model.num_layers: [2, 4], optim.weight_decay: [0.0, 0.3]}
seeds: 2
""",
        )
    )
    runs = sweep.expand({"model.hidden_size": 64})
    assert [m.id for m in sweep.members] == [
        "layers2_wd0.0",
        "layers2_wd0.3",
        "layers4_wd0.0",
        "layers4_wd0.3",
    ]
    assert len(runs) == 8
    assert [(r.member.id, r.seed) for r in runs[:2]] == [("layers2_wd0.0", 1234), ("layers2_wd0.0", 1235)]
    cfg = runs[3].config
    assert (cfg.model.num_layers, cfg.optim.weight_decay, cfg.train.seed) == (2, 0.3, 1235)
    assert (cfg.train.train_iters, cfg.model.hidden_size, cfg.model.ffn_hidden_size) == (30, 64, 512)
    # different seeds and members never share a run directory
    assert len({run_directory(tmp_path, r) for r in runs}) == 8
    assert [r.seed for r in sweep.expand({}, seeds=3)[:3]] == [1234, 1235, 1236]


def test_explicit_members_and_seed_list(tmp_path):
    sweep = load_sweep(
        _write(
            tmp_path,
            """
base: cpu_dense_deep
members:
  - {id: baseline}
  - {id: recipe, set: {optim.weight_decay: 0.3, model.seq_length: 512}}
seeds: [7, 3]
""",
        )
    )
    runs = sweep.expand({})
    assert [(r.member.id, r.seed, r.config.optim.weight_decay) for r in runs] == [
        ("baseline", 7, 0.1),
        ("baseline", 3, 0.1),
        ("recipe", 7, 0.3),
        ("recipe", 3, 0.3),
    ]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "base: cpu_dense_deep\ngrid: {model.num_layer: [2, 4]}",
            "member num_layer2: unknown key 'num_layer' in section 'model' of its member overrides "
            "(did you mean 'num_layers'?)",
        ),
        ("base: cpu_dense_deep\ngrid: {model.num_layers: [4, -1]}", "member layers-1"),
        ("base: cpu_dense_deep\ngrid: {model.num_layers: [2]}\nseeds: [1, 1]", "list a seed twice"),
        ("base: cpu_dense_deep\ngrid: {model.num_layers: [2]}\nseeds: 0", "seeds must be at least 1"),
        (
            "base: cpu_dense_deep\ngird: {model.num_layers: [2]}",
            "unknown sweep key 'gird' (did you mean 'grid'?)",
        ),
        ("base: no_such_preset\ngrid: {model.num_layers: [2]}", "is not a preset"),
        ("base: cpu_dense_deep\ngrid: {model.num_attention_heads: [8, 7]}", "member num_attention_heads7"),
    ],
)
def test_invalid_sweeps_fail_before_training(tmp_path, text, message):
    with pytest.raises(CompareError, match=re.escape(message)):
        load_sweep(_write(tmp_path, text)).expand({})


def test_every_shipped_sweep_validates():
    names = shipped_sweeps()
    assert {"cpu_smoke", "cpu_depth", "paper_depth", "cpu_recipe", "paper_recipe"} <= set(names)
    for name in names:
        sweep = load_sweep(name)
        runs = sweep.expand({})
        assert runs and sweep.expected_minutes, name


@pytest.mark.parametrize(
    "args,message",
    [
        (["cpu_smoke", "--seeds", "0"], "--seeds must be at least 1"),
        (["cpu_smok"], "did you mean 'cpu_smoke'"),
        (["cpu_smoke", "--set", "model.num_layers=-3"], "member layers2"),
        (["cpu_smoke", "--set", "nolayers"], "--set must be KEY=VALUE"),
    ],
)
def test_cli_refusals_train_nothing(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_cod.sweep.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
