"""Model FLOPs per token (training/flops.py): a hand count for small configs, and the count PyTorch's
FlopCounterMode measures on the real megatron model (forward + backward of one batch)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_cod import platform
from megatron_cod.config import ModelConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.training.flops import (
    PEAK_TFLOPS,
    forward_flops_per_token,
    gpu_model,
    matmul_dtype,
    peak_tflops,
    training_flops_per_token,
)

# d=64, 4 query heads of 16, GQA with 2 groups, T=32, 2 layers, V=256
BASE = dict(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    group_query_attention=True,
    num_query_groups=2,
    seq_length=32,
)


def test_dense_gqa_swiglu_hand_count():
    cfg = ModelConfig(**BASE, ffn_hidden_size=128)
    # per layer: Q 64x64, K and V 64x32 each, out 64x64 -> (4096 + 2*2048 + 4096) MACs = 12288 MACs
    #            scores 32 keys x 64 + context 32 x 64 = 4096 MACs
    #            SwiGLU gate+up 64x256, down 128x64 = 16384 + 8192 = 24576 MACs
    # head: 64 x 256 = 16384 MACs;  FLOPs = 2 x MACs
    per_layer = 2 * (12288 + 4096 + 24576)
    forward = 2 * per_layer + 2 * 16384
    f = forward_flops_per_token(cfg, 256)
    assert f.attention_projections == 2 * 2 * 12288 and f.attention_scores == 2 * 2 * 4096
    assert f.dense_mlp == 2 * 2 * 24576 and f.lm_head == 2 * 16384
    assert f.moe_experts == f.moe_router == f.moe_shared_expert == 0
    assert f.total == forward
    assert training_flops_per_token(cfg, 256) == 3 * forward


def test_dense_gelu_and_no_gqa():
    cfg = ModelConfig(num_layers=3, hidden_size=32, num_attention_heads=2, seq_length=8, swiglu=False)
    # MHA: QKV 3 x 32x32, out 32x32 = 4096 MACs; scores+context 2 x 8 x 32 = 512; GELU 4d: 2 x 32x128 = 8192
    forward = 3 * 2 * (4096 + 512 + 8192) + 2 * 32 * 100
    assert forward_flops_per_token(cfg, 100).total == forward


def test_moe_active_experts_shared_expert_and_router_hand_count():
    cfg = ModelConfig(
        **BASE,
        ffn_hidden_size=128,
        num_experts=8,
        moe_router_topk=2,
        moe_ffn_hidden_size=32,
        moe_shared_expert_intermediate_size=48,
        moe_layer_freq=2,
    )
    # layer 0 MoE (0 % 2 == 0), layer 1 dense
    # MoE layer: router 64x8 = 512 MACs; 2 experts x SwiGLU(64, 32) = 2 x 3 x 64 x 32 = 12288 MACs;
    #            shared SwiGLU(64, 48) = 3 x 64 x 48 = 9216 MACs
    f = forward_flops_per_token(cfg, 256)
    assert f.moe_router == 2 * 512 and f.moe_experts == 2 * 12288 and f.moe_shared_expert == 2 * 9216
    assert f.dense_mlp == 2 * 24576  # the one dense layer
    attention = 2 * (2 * 12288 + 2 * 4096)
    assert f.total == attention + 2 * (512 + 12288 + 9216) + 2 * 24576 + 2 * 16384


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=3)
    yield
    platform.teardown()


@pytest.mark.parametrize(
    "extra",
    [
        dict(ffn_hidden_size=96),
        dict(ffn_hidden_size=96, swiglu=False),
        # aux and z losses off: their matmul-free terms would not change the count, but keep it plain
        dict(
            num_experts=4,
            moe_router_topk=2,
            moe_ffn_hidden_size=32,
            moe_shared_expert_intermediate_size=48,
            moe_aux_loss_coeff=0.0,
            moe_z_loss_coeff=None,
        ),
    ],
    ids=["dense_swiglu", "dense_gelu", "moe_shared"],
)
def test_formula_equals_flops_measured_on_the_megatron_model(world, extra):
    torch.manual_seed(0)
    cfg = ModelConfig(**BASE, **extra)
    model = build_gpt_model(cfg, vocab_size=200)
    vocab = model.vocab_size  # padded as built
    batch = 3
    tokens = torch.randint(0, 200, (batch, cfg.seq_length))
    positions = torch.arange(cfg.seq_length).unsqueeze(0).expand(batch, -1)
    with FlopCounterMode(display=False) as counter:
        loss = model(tokens, positions, None, labels=tokens).float().mean()
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    n = batch * cfg.seq_length
    assert forward == forward_flops_per_token(cfg, vocab).total * n
    assert total == training_flops_per_token(cfg, vocab) * n


@pytest.mark.parametrize(
    "name, row",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA GH200 480GB", "H100 SXM"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_device_names_map_to_table_rows(name, row):
    assert gpu_model(name) == row


def test_peak_by_dtype():
    assert peak_tflops("NVIDIA H100 80GB HBM3", matmul_dtype(True, False)) == PEAK_TFLOPS["H100 SXM"]["bf16"]
    assert peak_tflops("NVIDIA A100-SXM4-40GB", matmul_dtype(False, True)) == PEAK_TFLOPS["A100"]["tf32"]
    assert peak_tflops("NVIDIA A100-SXM4-40GB", matmul_dtype(False, False)) == PEAK_TFLOPS["A100"]["fp32"]
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    assert peak_tflops("some CPU", "bf16") is None
    for row in PEAK_TFLOPS.values():  # tensor cores beat CUDA cores, bf16 doubles tf32
        if "bf16" in row:
            assert row["bf16"] > row["tf32"] > row["fp32"] * 0.99 and row["bf16"] >= 1.9 * row["tf32"]
