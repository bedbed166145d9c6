"""The one config -> TransformerConfig translation: every field has a home, effective values and every
parallel size are passed."""

import dataclasses

import pytest

from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.models.megatron_config import ELSEWHERE, RENAMED, transformer_config, translated_fields


def _moe():
    model = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=8, group_query_attention=True,
                        num_query_groups=2, num_experts=4, moe_router_topk=2, seq_length=64)
    parallel = ParallelConfig(tensor_model_parallel_size=2, expert_model_parallel_size=2,
                              expert_tensor_parallel_size=1, sequence_parallel=True)
    return model, parallel


def test_every_field_is_translated_or_placed_elsewhere():
    model, parallel = _moe()
    fields = {f.name for cls in (ModelConfig, ParallelConfig) for f in dataclasses.fields(cls)}
    assert set(ELSEWHERE) <= fields and set(RENAMED) <= fields  # no stale entries
    translated = translated_fields(model, parallel)
    placed = {RENAMED.get(name, name) for name in fields - set(ELSEWHERE)}
    assert placed == set(translated)


def test_effective_values_and_parallel_sizes_reach_megatron():
    model, parallel = _moe()
    config = transformer_config(model, parallel)
    assert config.num_query_groups == model.effective_num_query_groups == 2
    assert model.ffn_hidden_size is None and config.ffn_hidden_size == model.effective_ffn_hidden_size > 0
    assert config.moe_ffn_hidden_size == model.effective_moe_ffn_hidden_size
    assert config.num_moe_experts == 4 and config.moe_router_topk == 2
    assert config.gated_linear_unit is model.swiglu
    assert (config.tensor_model_parallel_size, config.expert_model_parallel_size,
            config.expert_tensor_parallel_size, config.sequence_parallel) == (2, 2, 1, True)


@pytest.mark.parametrize("group_query_attention", [False, True])
def test_dense_config_has_no_moe_fields(group_query_attention):
    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32,
                        group_query_attention=group_query_attention,
                        num_query_groups=2 if group_query_attention else None)
    config = transformer_config(model, ParallelConfig())
    assert config.num_moe_experts is None
    assert config.num_query_groups == (2 if group_query_attention else 4)
