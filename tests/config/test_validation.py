"""Construction-time validation of each section and of the cross-section rules."""

import dataclasses
import re

import pytest

from megatron_cod.config import ConfigError, ExperimentConfig, ModelConfig, OptimizerConfig, ParallelConfig

TE = {"transformer_impl": "transformer_engine"}

INVALID = [
    (
        {"model": {"group_query_attention": True, "num_query_groups": 3}},
        "num-query-groups (3) must divide num-attention-heads (8)",
    ),
    (
        {"model": {"num_experts": 6}, "parallel": {"expert_model_parallel_size": 4}},
        "num-experts (6) is not divisible by expert-model-parallel-size (4)",
    ),
    (
        {"model": {"num_experts": 4}, "parallel": {"tensor_model_parallel_size": 2}},
        "MoE with tensor parallelism needs --sequence-parallel",
    ),
    ({"model": {"hidden_size": 130}}, "hidden-size (130) must be divisible by num-attention-heads (8)"),
    (
        {"parallel": {"tensor_model_parallel_size": 3}},
        "num-attention-heads (8) must be divisible by tensor-model-parallel-size (3)",
    ),
    (
        {
            "model": {"group_query_attention": True, "num_query_groups": 2},
            "parallel": {"tensor_model_parallel_size": 4},
        },
        "num-query-groups (2) must be divisible by tensor-model-parallel-size (4)",
    ),
    ({"model": {"num_experts": 2, "moe_router_topk": 4}}, "moe-router-topk (4) exceeds num-experts (2)"),
    (
        {"train": {"global_batch_size": 10, "micro_batch_size": 4}},
        "global-batch-size (10) must be divisible by micro-batch-size (4)",
    ),
    (
        {"parallel": {"pipeline_model_parallel_size": 3}},
        "num-layers (16) must be divisible by pipeline-model-parallel-size (3)",
    ),
    ({"parallel": {"expert_model_parallel_size": 2}}, "expert-model-parallel-size (2) needs --num-experts"),
    ({"parallel": {"sequence_parallel": True}}, "--sequence-parallel needs tensor-model-parallel-size > 1"),
    (
        {"parallel": {"sequence_parallel": True, "tensor_model_parallel_size": 2}},
        "sequence parallel needs --transformer-impl transformer_engine: megatron's local spec uses torch "
        "LayerNorm, which does not support it",
    ),
    (
        {"model": {"seq_length": 101, **TE}, "parallel": {"sequence_parallel": True, "tensor_model_parallel_size": 2}},
        "seq-length (101) must be divisible by tensor-model-parallel-size (2) with --sequence-parallel",
    ),
    ({"model": {"hidden_size": 0}}, "hidden-size must be positive, got 0"),
    ({"model": {"num_layers": -1}}, "num-layers must be positive, got -1"),
    ({"train": {"micro_batch_size": 0}}, "micro-batch-size must be positive, got 0"),
    ({"optim": {"lr": 1e-3, "min_lr": 1e-2}}, "min-lr (0.01) must not exceed lr (0.001)"),
    ({"optim": {"min_lr": -1e-4}}, "min-lr must be non-negative, got -0.0001"),
    ({"optim": {"lr": 0}}, "lr must be positive, got 0.0"),
    (
        {"optim": {"lr_warmup_iters": 200}, "train": {"train_iters": 200}},
        "lr-warmup-iters (200) must be smaller than train-iters (200)",
    ),
    (
        {"optim": {"lr_warmup_iters": 10, "lr_decay_iters": 5}},
        "lr-warmup-iters (10) must be smaller than lr-decay-iters (5)",
    ),
    ({"optim": {"weight_decay": -0.1}}, "weight-decay must be non-negative, got -0.1"),
    ({"optim": {"adam_beta2": 1.0}}, "adam-beta2 must be in [0, 1), got 1.0"),
    ({"model": {"normalization": "BatchNorm"}}, "normalization must be one of 'RMSNorm', 'LayerNorm', got 'BatchNorm'"),
    (
        {"model": {"moe_token_dispatcher_type": "flex"}},
        "moe-token-dispatcher-type must be one of 'alltoall', 'allgather', got 'flex'",
    ),
    (
        {"optim": {"lr_decay_style": "exponential"}},
        "lr-decay-style must be one of 'cosine', 'linear', 'constant', got 'exponential'",
    ),
    (
        {"model": {"recompute_granularity": "partial"}},
        "recompute-granularity must be one of 'full', 'selective', got 'partial'",
    ),
    (
        {"model": {"recompute_granularity": "full", "recompute_num_layers": 1}},
        "--recompute-granularity full needs --recompute-method (uniform or block)",
    ),
    (
        {"model": {"recompute_granularity": "full", "recompute_method": "block"}},
        "--recompute-granularity full needs --recompute-num-layers",
    ),
    (
        {
            "model": {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 9},
            "parallel": {"pipeline_model_parallel_size": 2},
        },
        "recompute-num-layers (9) exceeds the layers per pipeline stage (8)",
    ),
    (
        {"model": {"num_query_groups": 4}},
        "num-query-groups (4) differs from num-attention-heads (8): add --group-query-attention",
    ),
    ({"model": {"group_query_attention": True}}, "--group-query-attention needs --num-query-groups"),
    (
        {"model": {"seq_length": 512, "max_position_embeddings": 256}},
        "seq-length (512) exceeds max-position-embeddings (256)",
    ),
    ({"model": {"hidden_dropout": 1.0}}, "hidden-dropout must be in [0, 1), got 1.0"),
    ({"model": {"moe_shared_expert_intermediate_size": 64}}, "moe-shared-expert-intermediate-size needs --num-experts"),
    ({"checkpoint": {"ckpt_format": "torch"}}, "ckpt-format must be one of 'torch_dist', got 'torch'"),
    ({"telemetry": {"interval": -1}}, "telemetry-interval must be non-negative, got -1"),
    ({"telemetry": {"attention_interval": -5}}, "telemetry-attention-interval must be non-negative, got -5"),
    ({"telemetry": {"weight_eps": 0}}, "telemetry-weight-eps must be positive, got 0.0"),
    ({"logging": {"wandb_mode": "cloud"}}, "wandb-mode must be one of 'online', 'offline', 'disabled', got 'cloud'"),
    ({"logging": {"mlflow_experiment": " "}}, "mlflow-experiment must not be empty"),
    ({"data": {"split": "90,x"}}, "split must be up to three non-negative numbers"),
    ({"data": {"data_path": ["0.5", "a", "b"]}}, "data-path must be WEIGHT PREFIX pairs when it starts with a weight"),
    ({"data": {"data_path": ["-1", "a", "1", "b"]}}, "data-path weights must be non-negative with a positive sum"),
    ({"model": {"num_layers": 2.5}}, "num-layers must be an integer, got 2.5"),
    ({"model": {"norm_placement": "sandwich"}},
     "norm-placement must be one of 'pre', 'post', 'peri', 'mix', got 'sandwich'"),
    ({"model": {"norm_placement": "mix", "mix_ln_alpha": 1.0}}, "mix-ln-alpha must be in (0, 1), got 1.0"),
    ({"model": {"mix_ln_alpha": 0}}, "mix-ln-alpha must be in (0, 1), got 0.0"),
    ({"model": {"mix_ln_alpha": -0.25}}, "mix-ln-alpha must be in (0, 1), got -0.25"),
    (
        {"model": {"norm_placement": "mix", "mix_ln_alpha": 0.05}},
        "--norm-placement mix with mix-ln-alpha 0.05 and num-layers 16 has no Post-LN layer",
    ),
    (
        {"model": {"norm_placement": "post", "layernorm_scaling": True}},
        "--layernorm-scaling with --norm-placement post is not meaningful",
    ),
    (
        {"model": {"norm_placement": "peri", "layernorm_scaling": True}},
        "--layernorm-scaling with --norm-placement peri is not meaningful",
    ),
    ({"model": {"peri_ln_embedding_norm": True}}, "--peri-ln-embedding-norm needs --norm-placement peri (got pre)"),
    (
        {"model": {"norm_placement": "mix", "peri_ln_embedding_norm": True}},
        "--peri-ln-embedding-norm needs --norm-placement peri (got mix)",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_invalid_config_is_rejected_with_its_flag_names(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        ExperimentConfig.from_dict(overrides)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_python_constructor_is_strict_about_types():
    with pytest.raises(ConfigError, match=re.escape("num-layers must be an integer, got '16'")):
        ModelConfig(num_layers="16")
    with pytest.raises(ConfigError, match=re.escape("bf16 must be true or false, got 1")):
        ModelConfig(bf16=1)
    assert OptimizerConfig(lr=1).lr == 1.0 and isinstance(OptimizerConfig(lr=1).lr, float)


def test_sections_are_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_layers = 4


def test_defaults_are_valid_and_have_the_documented_values():
    cfg = ExperimentConfig()
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (16, 128, 8)
    assert cfg.data.data_path == [] and cfg.logging.mlflow and cfg.telemetry.enabled
    assert not cfg.model.is_moe


def _naive_swiglu_width(hidden):
    target = int(8 / 3 * hidden)
    width = 64
    while width < target:
        width += 64
    return width


@pytest.mark.parametrize("hidden", [64, 96, 128, 200, 1120, 2048])
def test_default_ffn_width_is_8_thirds_rounded_up_to_64(hidden):
    model = ModelConfig(hidden_size=hidden, num_attention_heads=1)
    assert model.effective_ffn_hidden_size == _naive_swiglu_width(hidden)
    assert model.effective_moe_ffn_hidden_size == model.effective_ffn_hidden_size


def test_derived_sizes_follow_explicit_values():
    plain = ModelConfig(hidden_size=96, swiglu=False)
    assert plain.effective_ffn_hidden_size == 4 * 96
    gqa = ModelConfig(
        group_query_attention=True,
        num_query_groups=2,
        ffn_hidden_size=300,
        num_experts=4,
        moe_ffn_hidden_size=70,
        max_position_embeddings=1000,
    )
    assert gqa.effective_num_query_groups == 2 and ModelConfig().effective_num_query_groups == 8
    assert gqa.effective_ffn_hidden_size == 300 and gqa.effective_moe_ffn_hidden_size == 70
    assert gqa.effective_max_position_embeddings == 1000
    assert ModelConfig(seq_length=77).effective_max_position_embeddings == 77
    assert gqa.head_dim == 128 // 8 and gqa.is_moe
    assert OptimizerConfig().effective_lr_decay_iters(123) == 123
    assert OptimizerConfig(lr_decay_iters=50).effective_lr_decay_iters(123) == 50


@pytest.mark.parametrize(("tp", "pp", "world"), [(1, 1, 1), (2, 1, 4), (2, 2, 8), (1, 4, 8), (4, 2, 16)])
def test_world_size_gives_data_parallel_size(tp, pp, world):
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    assert parallel.validate_world_size(world) * tp * pp == world


def test_world_size_errors_name_the_sizes():
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "world size (6) is not divisible by tensor-model-parallel-size (4) x pipeline-model-parallel-size (1)"
        ),
    ):
        ParallelConfig(tensor_model_parallel_size=4).validate_world_size(6)
    moe = ParallelConfig(pipeline_model_parallel_size=2, expert_model_parallel_size=4)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "world size / pipeline-model-parallel-size (2) is not divisible by expert-model-parallel-size (4)"
        ),
    ):
        moe.validate_world_size(4)
    assert moe.validate_world_size(8) == 4
    etp = ParallelConfig(tensor_model_parallel_size=2, expert_model_parallel_size=2)
    with pytest.raises(
        ConfigError, match=re.escape("expert-tensor-parallel-size (2) x expert-model-parallel-size (2)")
    ):
        etp.validate_world_size(2)
    assert (
        ParallelConfig(
            tensor_model_parallel_size=2, expert_model_parallel_size=2, expert_tensor_parallel_size=1
        ).validate_world_size(2)
        == 1
    )


def test_experiment_world_size_checks_the_batch_split():
    cfg = ExperimentConfig.from_dict({"train": {"global_batch_size": 8, "micro_batch_size": 4}})
    assert cfg.validate_world_size(2) == 2
    with pytest.raises(
        ConfigError,
        match=re.escape("global-batch-size (8) must be divisible by micro-batch-size (4) x data-parallel size (4)"),
    ):
        cfg.validate_world_size(4)


def test_valid_moe_with_tensor_and_sequence_parallel():
    cfg = ExperimentConfig.from_dict(
        {
            "model": {"num_experts": 4, **TE},
            "parallel": {"tensor_model_parallel_size": 2, "sequence_parallel": True, "expert_model_parallel_size": 2},
        }
    )
    assert cfg.validate_world_size(4) == 2


@pytest.mark.parametrize(("alpha", "layers", "post_layers"),
                         [(0.25, 16, 4), (0.29, 100, 29), (0.5, 3, 1), (0.99, 4, 3)])
def test_mix_ln_post_layers_is_floor_of_alpha_times_layers(alpha, layers, post_layers):
    # 0.29 * 100 is 28.999999999999996 in binary floating point; the count follows the decimal alpha.
    cfg = ModelConfig(num_layers=layers, norm_placement="mix", mix_ln_alpha=alpha)
    assert cfg.mix_ln_post_layers == post_layers


@pytest.mark.parametrize("placement", ["pre", "mix"])
def test_layernorm_scaling_combines_with_pre_and_mix(placement):
    assert ModelConfig(norm_placement=placement, layernorm_scaling=True).layernorm_scaling


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norm-placement", "sandwich"],
         "error: norm-placement must be one of 'pre', 'post', 'peri', 'mix', got 'sandwich'"),
        (["--norm-placement", "mix", "--mix-ln-alpha", "1.5"], "error: mix-ln-alpha must be in (0, 1), got 1.5"),
        (["--norm-placement", "post", "--layernorm-scaling"],
         "error: --layernorm-scaling with --norm-placement post is not meaningful"),
    ],
)
def test_norm_placement_errors_on_the_command_line_are_one_line(capsys, argv, message):
    from megatron_cod.config import load_config

    with pytest.raises(SystemExit) as exit_info:
        load_config(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message)
