"""The layer-stack primitives and generic operations against hand composition and HF's own forward."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.adapter import replace_layer, skip_layers, swap_layers
from megatron_cod.analysis.hf_adapter import HFLayerStack

FAMILIES = ("llama", "qwen2", "mixtral", "olmoe")


def test_run_overrides_compose_by_hand(toy_stack, random_affine_layers):
    layers = random_affine_layers(4, 6)
    fns = [lambda h, m=m, c=c: torch.tanh(h @ m + c) for m, c in layers]
    stack = toy_stack(fns, hidden=6)
    h = torch.randn(2, 3, 6)
    f = fns
    assert torch.allclose(stack.run(h, None), f[3](f[2](f[1](f[0](h)))))
    assert torch.allclose(stack.run(h, None, overrides=skip_layers(1, 2)), f[3](f[0](h)))
    assert torch.allclose(stack.run(h, None, overrides=swap_layers(0, 2)), f[3](f[0](f[1](f[2](h)))))
    double = lambda x: 2 * x  # noqa: E731
    assert torch.allclose(stack.run(h, None, overrides=replace_layer(3, double)), 2 * f[2](f[1](f[0](h))))
    assert torch.allclose(stack.run(h, None, start=2), f[3](f[2](h)))
    seen = []
    stack.run(h, None, start=1, stop=3, hook=lambda pos, a, b: seen.append((pos, torch.equal(b, f[pos](a)))))
    assert seen == [(1, True), (2, True)]


def test_run_rejects_bad_ranges(toy_stack):
    stack = toy_stack([lambda h: h] * 2, hidden=4)
    with pytest.raises(ValueError):
        stack.run(torch.zeros(1, 1, 4), None, start=3)
    with pytest.raises(ValueError):
        swap_layers(1, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_states_and_logits_match_model_forward(family, tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model(family)
    ids = token_ids(2, 7)
    stack = HFLayerStack(model)
    assert (stack.num_layers, stack.hidden_size, stack.vocab_size) == (3, 16, 40)
    with torch.no_grad():
        ctx = stack.prepare(ids)
        states = stack.capture_states(ids, ctx)
        logits = stack.head(states[-1])
    reference = hf_reference.states(model, ids)
    assert len(states) == len(reference) == 4
    for ours, ref in zip(states, reference):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, hf_reference.logits(model, ids), rtol=1e-5, atol=1e-5)


def test_hf_swap_skip_replace_match_reordered_model(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(2, 7)
    stack = HFLayerStack(model)
    layers = list(model.model.layers)
    affine = torch.nn.Linear(16, 16)
    cases = [
        (swap_layers(0, 2), [layers[2], layers[1], layers[0]]),
        (skip_layers(1), [layers[0], hf_reference.identity(), layers[2]]),
        (replace_layer(1, affine), [layers[0], hf_reference.function(affine), layers[2]]),
    ]
    for overrides, modules in cases:
        with torch.no_grad():
            ctx = stack.prepare(ids)
            first = min(overrides)
            states = stack.capture_states(ids, ctx)
            ours = stack.head(stack.run(states[first], ctx, start=first, overrides=overrides))
        restore = hf_reference.with_layers(model, modules)
        try:
            expected = hf_reference.logits(model, ids)
        finally:
            restore()
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_hf_adapter_rejects_models_without_layer_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    from megatron_cod.analysis.errors import AnalysisError

    with pytest.raises(AnalysisError, match="model.model.layers"):
        HFLayerStack(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_the_model_device(tiny_hf_model, token_ids):
    from megatron_cod.analysis.evalset import EvalSet
    from megatron_cod.analysis.suite import SuiteConfig, run_suite

    ids = token_ids(4, 8)
    suite = SuiteConfig(
        metrics=("jacobian", "usefulness", "causal", "permutation", "similarity", "logit-lens")
    )
    cpu = run_suite(EvalSet(HFLayerStack(tiny_hf_model("llama")), ids, 2), suite).global_metrics()
    gpu = run_suite(EvalSet(HFLayerStack(tiny_hf_model("llama").cuda()), ids, 2), suite).global_metrics()
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-4), key
