"""LayerNorm Scaling multiplies each sub-layer's normalised input by 1/sqrt(global layer number)."""

import math

import pytest
import torch

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.models import build_gpt_model, layernorm_scaling_factor


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=3)
    yield
    platform.teardown()


def _capture_branch_inputs(model, tokens):
    """Inputs of every layer's linear_qkv and of its MLP (the normalised sub-layer inputs)."""
    seen = {}
    handles = []
    for layer in model.decoder.layers:
        n = layer.layer_number
        handles.append(layer.self_attention.linear_qkv.register_forward_pre_hook(
            lambda m, a, n=n: seen.__setitem__(("attn", n), a[0].detach().clone())))
        handles.append(layer.mlp.register_forward_pre_hook(
            lambda m, a, n=n: seen.__setitem__(("mlp", n), a[0].detach().clone())))
    pos = torch.arange(tokens.shape[1]).unsqueeze(0)
    model(tokens, pos, None)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("num_experts", [None, 4])
def test_scaled_inputs_equal_reference_norm_over_sqrt_layer(world, num_experts):
    kw = dict(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=16, num_experts=num_experts,
              moe_ffn_hidden_size=32 if num_experts else None)
    plain = build_gpt_model(ModelConfig(**kw), 64, ParallelConfig())
    scaled = build_gpt_model(ModelConfig(layernorm_scaling=True, **kw), 64, ParallelConfig())
    scaled.load_state_dict(plain.state_dict())
    assert sorted(plain.state_dict()) == sorted(scaled.state_dict())
    tokens = torch.randint(0, 64, (2, 16))
    # Layer 1's inputs are identical in both models; compare each layer's own normalised input by
    # feeding the scaled model's residual stream through the plain model's norm by hand.
    seen = _capture_branch_inputs(scaled, tokens)
    residual_in = {}
    mlp_norm_in = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, kw_, n=layer.layer_number: residual_in.__setitem__(n, kw_["hidden_states"].detach().clone()),
        with_kwargs=True) for layer in scaled.decoder.layers]
    hooks += [layer.pre_mlp_layernorm.register_forward_pre_hook(
        lambda m, a, n=layer.layer_number: mlp_norm_in.__setitem__(n, a[0].detach().clone()))
        for layer in scaled.decoder.layers]
    scaled(tokens, torch.arange(16).unsqueeze(0), None)
    for h in hooks:
        h.remove()
    def rms_norm(x, norm):
        return x * x.pow(2).mean(-1, keepdim=True).add(norm.eps).rsqrt() * norm.weight

    for layer in scaled.decoder.layers:
        n = layer.layer_number
        expected_attn = rms_norm(residual_in[n], layer.input_layernorm) / math.sqrt(n)
        expected_mlp = rms_norm(mlp_norm_in[n], layer.pre_mlp_layernorm) / math.sqrt(n)
        torch.testing.assert_close(seen[("attn", n)], expected_attn, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[("mlp", n)], expected_mlp, rtol=1e-5, atol=1e-6)
    # layer 1 has factor 1: both models agree on its inputs
    base = _capture_branch_inputs(plain, tokens)
    torch.testing.assert_close(seen[("attn", 1)], base[("attn", 1)])
    torch.testing.assert_close(seen[("mlp", 1)], base[("mlp", 1)])


def test_factor_closed_form():
    assert layernorm_scaling_factor(1) == 1.0
    assert layernorm_scaling_factor(16) == 0.25
    with pytest.raises(ValueError):
        layernorm_scaling_factor(0)
