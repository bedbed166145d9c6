"""Standard errors against naive numpy over per-sequence scores, and adaptive sampling's stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.logit_lens import LogitLensConfig, logit_lens_scores
from megatron_cod.analysis.permutation import PermutationConfig, permutation_scores
from megatron_cod.analysis.sampling import SamplingConfig
from megatron_cod.analysis.stats import ratio_of_sums, unresolved_pairs
from megatron_cod.analysis.usefulness import UsefulnessConfig, usefulness_scores


def _nonlinear_layers(num: int, d: int, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(d, d, generator=gen) for _ in range(num)]
    return [lambda h, w=w: h + torch.tanh(h @ w) for w in weights]


def test_logit_lens_stderr_is_the_std_of_per_sequence_means(toy_stack, token_ids):
    stack = toy_stack(_nonlinear_layers(2, 6), hidden=6)
    ids = token_ids(5, 7)
    result = logit_lens_scores(EvalSet(stack, ids, 2), LogitLensConfig())
    states = [stack.embed(ids)]
    for layer in stack.layers:
        states.append(layer(states[-1]))
    final = torch.log_softmax(states[-1] @ stack.unembedding, -1)
    for l, h in enumerate(states):
        decoded = torch.log_softmax(h @ stack.unembedding, -1)
        per_sequence = (final.exp() * (final - decoded)).sum(-1).mean(-1).double().numpy()
        assert result.states[l].kl_to_final == pytest.approx(per_sequence.mean(), rel=1e-5, abs=1e-7)
        expected = per_sequence.std(ddof=1) / np.sqrt(len(per_sequence))
        assert result.states[l].kl_stderr == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert result.num_sequences == 5


def test_permutation_stderr_is_the_leave_one_sequence_out_jackknife(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(4, 6)
    result = permutation_scores(EvalSet(HFLayerStack(model), ids, 3), PermutationConfig(pairs=((0, 2),)))
    layers = list(model.model.layers)
    base = np.array([hf_reference.loss(model, ids[i : i + 1]) for i in range(4)])
    restore = hf_reference.with_layers(model, [layers[2], layers[1], layers[0]])
    try:
        swapped = np.array([hf_reference.loss(model, ids[i : i + 1]) for i in range(4)])
    finally:
        restore()
    leave_out = [
        abs(np.delete(base, i).mean() - np.delete(swapped, i).mean()) / np.delete(base, i).mean()
        for i in range(4)
    ]
    expected = np.sqrt(3 / 4 * ((np.array(leave_out) - np.mean(leave_out)) ** 2).sum())
    assert result.pairs[0].score == pytest.approx(abs(base.mean() - swapped.mean()) / base.mean(), rel=1e-4)
    assert result.pairs[0].stderr == pytest.approx(expected, rel=1e-3)
    assert result.pairs[0].stderr > 0


def test_paired_differences_decide_which_layer_orders_are_resolved():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(10, 3, size=(50, 1))  # shared by all layers: cancels in differences
    losses = difficulty * np.array([1.0, 1.2, 1.20005]) + rng.normal(0, 0.01, size=(50, 3))
    scored = ratio_of_sums(losses, difficulty)
    assert unresolved_pairs(scored) == [(1, 2)]


def test_adaptive_sampling_stops_when_resolved_and_at_the_cap(tiny_hf_model, token_ids):
    model = tiny_hf_model("llama")
    with torch.no_grad():  # layer 1 made useless: both branches write zero (an identity layer)
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    evalset = EvalSet(HFLayerStack(model), token_ids(40, 8), 4)
    early = usefulness_scores(
        evalset, UsefulnessConfig(), sampling=SamplingConfig(target_se=0.05, min_samples=4)
    )
    assert early.eval_sequences < 40
    assert all(layer.loss_ratio_stderr <= 0.05 for layer in early.layers)
    useless = early.layers[1]
    assert useless.loss_ratio == pytest.approx(1.0, abs=1e-5) and useless.loss_ratio_stderr < 1e-5
    capped = usefulness_scores(
        evalset, UsefulnessConfig(), sampling=SamplingConfig(target_se=1e-12, min_samples=4)
    )
    assert capped.eval_sequences == 40
