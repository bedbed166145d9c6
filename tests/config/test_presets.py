"""The shipped presets: all valid, and holding the values of the example script and of the paper."""

import math

import pytest

from megatron_cod.config import ConfigError, ExperimentConfig, available_presets, parse_config, preset_dict
from megatron_cod.config.presets import _PRESET_DIR

PAPER = ["paper_dense_l16", "paper_dense_l32_baseline", "paper_recipe_l32", "paper_moe_1b7b"]
PAPER_TOKENS = 5e9  # scripts/train_script.sh max_duration


def test_available_presets():
    placements = {f"{base}_{v}" for base in ("cpu_dense", "paper_dense_l32") for v in ("lns", "peri", "mix")}
    assert set(available_presets()) == {"cpu_moe_deep", "cpu_dense_deep", "cpu_sweep_base", *PAPER, *placements}


@pytest.mark.parametrize("name", sorted(available_presets()))
def test_preset_is_valid_and_round_trips(name):
    cfg = parse_config(["--preset", name])
    assert ExperimentConfig.from_dict(preset_dict(name)) == cfg


def test_unknown_preset():
    listed = "cpu_dense_deep, cpu_dense_lns, cpu_dense_mix, cpu_dense_peri, cpu_moe_deep"
    with pytest.raises(ConfigError, match=f"unknown preset 'x'; available: {listed}"):
        preset_dict("x")


def test_cpu_moe_deep_matches_the_example_script():
    cfg = parse_config(["--preset", "cpu_moe_deep"])
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.effective_num_query_groups) == (16, 128, 8, 4)
    assert (m.num_experts, m.moe_router_topk, m.moe_ffn_hidden_size, m.seq_length) == (8, 2, 256, 256)
    assert (t.micro_batch_size, t.global_batch_size, t.train_iters) == (4, 8, 300)
    assert (o.weight_decay, o.lr, t.eval_interval, t.eval_iters, cfg.telemetry.interval) == (0.1, 3e-3, 100, 10, 10)


def test_cpu_dense_deep_differs_only_in_the_ffn():
    moe = parse_config(["--preset", "cpu_moe_deep"]).to_flat_dict()
    dense = parse_config(["--preset", "cpu_dense_deep"]).to_flat_dict()
    differing = {k for k in moe if moe[k] != dense[k]}
    assert differing == {"model.num_experts", "model.moe_ffn_hidden_size", "model.ffn_hidden_size"}
    assert dense["model.ffn_hidden_size"] == 512


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_share_the_paper_training_recipe(name):
    first_line = (_PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# Reproduces ")
    cfg = parse_config(["--preset", name])
    o = cfg.optim
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.clip_grad) == (0.9, 0.95, 1e-8, 1.0)
    assert o.lr_decay_style == "cosine" and o.min_lr == pytest.approx(0.1 * o.lr) and o.lr == 4e-4
    assert o.lr_warmup_iters == 1000 and cfg.model.bf16
    assert not o.decay_norm_and_bias and not o.decay_embeddings
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    assert cfg.train.train_iters == math.ceil(PAPER_TOKENS / tokens_per_step)


def test_paper_shapes():
    l16 = parse_config(["--preset", "paper_dense_l16"]).model
    assert (l16.num_layers, l16.hidden_size, l16.num_attention_heads, l16.ffn_hidden_size, l16.seq_length) == (
        16,
        2048,
        16,
        8192,
        1024,
    )
    base = parse_config(["--preset", "paper_dense_l32_baseline"])
    b = base.model
    assert (b.num_layers, b.hidden_size, b.num_attention_heads, b.ffn_hidden_size, b.seq_length) == (
        32,
        1120,
        16,
        8960,
        1024,
    )
    assert base.optim.weight_decay == 0.1 and not b.is_moe
    recipe = parse_config(["--preset", "paper_recipe_l32"])
    r = recipe.model
    assert (r.num_layers, r.hidden_size, r.seq_length, recipe.optim.weight_decay) == (32, 1120, 4096, 0.3)
    assert r.num_attention_heads // r.effective_num_query_groups == 2
    assert (r.num_experts, r.moe_router_topk, r.moe_ffn_hidden_size) == (64, 8, 1120)
    assert (r.moe_aux_loss_coeff, r.moe_z_loss_coeff) == (0.01, 0.001)
    olmoe = parse_config(["--preset", "paper_moe_1b7b"]).model
    assert (
        olmoe.hidden_size,
        olmoe.num_layers,
        olmoe.num_experts,
        olmoe.moe_router_topk,
        olmoe.moe_ffn_hidden_size,
    ) == (2048, 16, 64, 8, 1024)
