"""Metric key format and which rank counts which parameter."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.telemetry import naming
from megatron_cod.telemetry.params import (
    GradRange,
    ParallelRanks,
    counts_whole_tensor,
    is_routed_expert_param,
    merged_grad_views,
    weight_family,
)


def test_keys_pad_layer_numbers_to_the_model_depth():
    assert naming.depth_key("var", 7, 16) == "depth/var/layer_07"
    assert naming.depth_key("var", 7, 120) == "depth/var/layer_007"
    assert naming.depth_key("var_final_norm", 16, 16) == "depth/var_final_norm/layer_16"
    assert naming.attention_key("entropy", 7, 16, 3, 8) == "attn/entropy/layer_07/head_03"
    assert naming.attention_key("entropy", 7, 16) == "attn/entropy/layer_07"
    assert naming.expert_key("tokens", 2, 16, 5, 128) == "moe/tokens/layer_02/expert_005"
    assert naming.weight_key("hoyer", 1, 4, "linear_qkv") == "weights/hoyer/layer_01/linear_qkv"
    with pytest.raises(ValueError):
        naming.layer_tag(0, 16)
    with pytest.raises(ValueError):
        naming.layer_tag(17, 16)


@pytest.mark.parametrize("name,family", [
    ("self_attention.linear_qkv.weight", "linear_qkv"),
    ("self_attention.linear_proj.weight", "linear_proj"),
    ("mlp.linear_fc1.weight", "linear_fc1"),
    ("mlp.linear_fc2.weight", "linear_fc2"),
    ("mlp.router.weight", "router"),
    ("mlp.experts.local_experts.3.linear_fc1.weight", "experts.linear_fc1"),
    ("mlp.experts.linear_fc2.weight7", "experts.linear_fc2"),  # TEGroupedMLP
    ("mlp.experts.weight1", "experts.linear_fc1"),  # GroupedMLP
    ("mlp.shared_experts.linear_fc2.weight", "shared_experts.linear_fc2"),
    ("input_layernorm.weight", None),
    ("self_attention.linear_qkv.layer_norm_weight", None),
    ("mlp.linear_fc1.bias", None),
])
def test_weight_family(name, family):
    assert weight_family(name) == family


def test_routed_experts_are_not_shared_experts():
    assert is_routed_expert_param("mlp.experts.local_experts.0.linear_fc1.weight")
    assert not is_routed_expert_param("mlp.shared_experts.linear_fc1.weight")
    assert not is_routed_expert_param("mlp.router.weight")


def _param(split: bool) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(2))
    p.tensor_model_parallel = split
    return p


def test_each_shard_is_counted_on_exactly_one_rank():
    split, replicated = _param(True), _param(False)
    # A 2 (TP) x 2 (DP) grid; routed experts use their own expert-TP / expert-DP ranks.
    grid = [ParallelRanks(tp=t, dp_cp=d, expert_tp=0, expert_dp=d) for t in (0, 1) for d in (0, 1)]
    assert [counts_whole_tensor(split, False, r) for r in grid] == [True, False, True, False]
    assert [counts_whole_tensor(replicated, False, r) for r in grid] == [True, False, False, False]
    # Experts not split by expert-TP (size 1): counted on expert-DP rank 0 of every TP rank,
    # because those ranks hold different experts under expert parallelism.
    assert [counts_whole_tensor(replicated, True, r) for r in grid] == [True, False, True, False]


def test_grad_ranges_merge_into_one_view_per_contiguous_run_of_a_layer():
    """Adjacent ranges of one layer in one buffer become one view; a gap, another buffer or another
    layer starts a new one. The squared norms per layer are those of the ranges themselves."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(100, generator=g), torch.randn(50, generator=g)
    ranges = [
        GradRange(1, a, 40, 60),
        GradRange(0, a, 0, 10),
        GradRange(0, a, 10, 25),  # adjacent to the one before: merged
        GradRange(0, a, 30, 40),  # gap at 25..30: new run
        GradRange(1, a, 60, 100),  # adjacent: merged
        GradRange(0, b, 0, 20),  # other buffer
        GradRange(0, b, 20, 50),
    ]
    views = merged_grad_views(ranges)
    in_b = b.untyped_storage().data_ptr()
    spans = sorted((row, v.untyped_storage().data_ptr() == in_b, v.numel()) for row, v in views)
    assert spans == [(0, False, 10), (0, False, 25), (0, True, 50), (1, False, 60)]
    for row in (0, 1):
        want = sum(r.buffer[r.lo : r.hi].double().square().sum().item() for r in ranges if r.row == row)
        got = sum(v.double().square().sum().item() for r, v in views if r == row)
        assert got == pytest.approx(want, rel=1e-12)
