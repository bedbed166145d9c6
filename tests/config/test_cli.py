"""Megatron-style flags: coverage of every field, precedence, and one-line errors with exit status 2."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from megatron_cod.config import ConfigError, ExperimentConfig, build_parser, load_config, parse_config
from megatron_cod.config.experiment import SECTIONS
from megatron_cod.config.fields import flag


def test_every_field_has_a_distinct_flag():
    flags = [flag(cls, f.name) for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(flags) == len(set(flags))
    option_strings = {s for action in build_parser()._actions for s in action.option_strings}
    assert set(flags) <= option_strings


def test_no_flags_gives_the_defaults():
    assert parse_config([]) == ExperimentConfig()


def test_flags_set_fields():
    cfg = parse_config(
        [
            "--num-layers",
            "8",
            "--hidden-size",
            "64",
            "--num-attention-heads",
            "4",
            "--group-query-attention",
            "--num-query-groups",
            "2",
            "--num-experts",
            "4",
            "--moe-router-topk",
            "1",
            "--moe-z-loss-coeff",
            "none",
            "--lr",
            "2e-3",
            "--min-lr",
            "0",
            "--weight-decay",
            "0.3",
            "--no-telemetry",
            "--telemetry-weight-eps",
            "0.05",
            "--data-path",
            "0.6",
            "a",
            "0.4",
            "b",
            "--bf16",
            "--no-mlflow",
            "--wandb-mode",
            "disabled",
            "--builtin-dataset",
            "tiny",
            "--decay-embeddings",
            "--save",
            "/ckpt",
            "--save-interval",
            "50",
        ]
    )
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.effective_num_query_groups) == (8, 64, 4, 2)
    assert (m.num_experts, m.moe_router_topk, m.moe_z_loss_coeff, m.bf16) == (4, 1, None, True)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.decay_embeddings) == (
        2e-3,
        0.0,
        0.3,
        True,
    )
    assert not cfg.telemetry.enabled and cfg.telemetry.weight_eps == 0.05
    assert cfg.data.data_path == ["0.6", "a", "0.4", "b"] and cfg.data.builtin == "tiny"
    assert not cfg.logging.mlflow and cfg.logging.wandb_mode == "disabled"
    assert (cfg.checkpoint.save, cfg.checkpoint.save_interval) == ("/ckpt", 50)


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {"train": {"train_iters": 50}, "optim": {"lr": 1e-3, "min_lr": 1e-5}, "telemetry": {"enabled": False}}
        )
    )
    cfg = parse_config(["--preset", "cpu_moe_deep", "--config", str(path), "--lr", "2e-3", "--telemetry"])
    assert cfg.model.num_experts == 8 and cfg.model.num_query_groups == 4  # preset
    assert cfg.train.train_iters == 50 and cfg.optim.min_lr == 1e-5  # YAML over preset
    assert cfg.optim.lr == 2e-3 and cfg.telemetry.enabled  # flags over YAML
    assert cfg.model.rotary_base == 10000 and cfg.train.seed == 1234  # untouched defaults
    assert parse_config(["--preset", "cpu_moe_deep", "--config", str(path)]).optim.lr == 1e-3


def test_validation_sees_the_merged_config(tmp_path):
    # The YAML alone would fail (num_query_groups without GQA); the flag completes it.
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  num_query_groups: 2\n")
    assert parse_config(["--config", str(path), "--group-query-attention"]).model.num_query_groups == 2
    with pytest.raises(ConfigError, match="add --group-query-attention"):
        parse_config(["--config", str(path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-layers", "x"], "error: argument --num-layers: num-layers must be an integer, got 'x' (see --help)"),
        (["--bogus"], "error: unrecognized arguments: --bogus (see --help)"),
        (
            ["--group-query-attention", "--num-query-groups", "3"],
            "error: num-query-groups (3) must divide num-attention-heads (8)",
        ),
        (["--preset", "nope"], "error: unknown preset 'nope'; available: "),
        (["--config", "/nonexistent/x.yaml"], "error: cannot read config file /nonexistent/x.yaml"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message)


def test_command_line_error_has_no_traceback():
    code = "from megatron_cod.config import load_config; load_config()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--num-experts", "6", "--expert-model-parallel-size", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: num-experts (6) is not divisible by expert-model-parallel-size (4)\n"


def test_help_lists_flags_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--moe-shared-expert-intermediate-size" in out and "--no-telemetry" in out
