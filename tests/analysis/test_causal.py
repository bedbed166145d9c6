"""Causal skip matrix: zero for independent updates, and the aligned definition via HF's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_cod.analysis.causal import CausalConfig, causal_scores
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack


def test_updates_independent_of_earlier_layers_give_a_zero_matrix(toy_stack, token_ids):
    gen = torch.Generator().manual_seed(0)
    biases = [torch.randn(5, generator=gen) for _ in range(4)]
    stack = toy_stack([lambda h, c=c: h + c for c in biases], hidden=5)
    result = causal_scores(EvalSet(stack, token_ids(3, 4), 2), CausalConfig())
    assert np.abs(result.matrix).max() == pytest.approx(0.0, abs=1e-6)
    assert result.score == pytest.approx(0.0, abs=1e-6)
    assert all(s.kl > 0 for s in result.skips)  # skipping still changes the output


def test_matches_naive_skip_through_hf_forward(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(3, 6)
    result = causal_scores(EvalSet(HFLayerStack(model), ids, 2), CausalConfig())
    base = hf_reference.states(model, ids)
    base_logits = hf_reference.logits(model, ids)
    baseline = hf_reference.loss(model, ids)
    layers = list(model.model.layers)
    num = len(layers)
    expected = np.zeros((num, num))
    for s in range(num):
        restore = hf_reference.with_layers(model, layers[:s] + [hf_reference.identity()] + layers[s + 1 :])
        try:
            skipped = hf_reference.states(model, ids)
            logits = hf_reference.logits(model, ids)
            loss = hf_reference.loss(model, ids)
        finally:
            restore()
        for l in range(s + 1, num):
            f = base[l + 1] - base[l]
            f_skip = skipped[l + 1] - skipped[l]
            expected[s, l] = float((f_skip - f).norm(dim=-1).mean() / f.norm(dim=-1).mean())
        p, q = torch.log_softmax(base_logits, -1), torch.log_softmax(logits, -1)
        kl = float((p.exp() * (p - q)).sum(-1).mean())
        agree = float((base_logits.argmax(-1) == logits.argmax(-1)).float().mean())
        skip = result.skips[s]
        assert skip.kl == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert skip.top1_agreement == pytest.approx(agree)
        assert skip.loss_ratio == pytest.approx(loss / baseline, rel=1e-5)
    np.testing.assert_allclose(result.matrix, expected, rtol=1e-5, atol=1e-7)
    assert result.score == pytest.approx(expected[np.triu_indices(num, 1)].mean(), rel=1e-5)
    assert result.matrix[0, 1] > 0.01


def test_a_partial_batch_is_compared_with_its_own_rows_of_the_reference(toy_stack, token_ids):
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(5, 5, generator=gen) for _ in range(3)]
    stack = toy_stack([lambda h, w=w: h + torch.tanh(h @ w) for w in weights], hidden=5)
    ids = token_ids(5, 4)
    part = causal_scores(EvalSet(stack, ids, 4), CausalConfig(max_sequences=3))  # rows 0..2 of batch 0
    alone = causal_scores(EvalSet(stack, ids[:3], 4), CausalConfig())
    assert part.num_sequences == 3
    for a, b in zip(part.skips, alone.skips):
        assert a.kl == pytest.approx(b.kl, rel=1e-6) and a.top1_agreement == b.top1_agreement
