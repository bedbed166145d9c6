"""Standard errors against naive numpy over per-sequence scores, and adaptive sampling's stopping rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from megatron_cod.analysis.causal import CausalAccumulator
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.logit_lens import LogitLensAccumulator, LogitLensConfig, logit_lens_scores
from megatron_cod.analysis.permutation import PermutationConfig, permutation_scores
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
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


def _self_sampled(model: Any, n: int, s: int, seed: int) -> torch.Tensor:
    """Sequences drawn from the model's own next-token distribution.

    On such data the model is the true distribution, so any change of it raises the expected loss
    by KL(p || q) > 0: every layer whose replacement changes the output has a loss ratio above 1,
    and only an identity layer (whose affine fit is exact) has a ratio of 1.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.config.vocab_size), (n, 1), generator=gen)
    with torch.no_grad():
        for _ in range(s - 1):
            probs = torch.softmax(model(input_ids=ids).logits[:, -1], dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return ids


def test_adaptive_sampling_resolves_the_useless_layer_early_and_stops_at_the_cap(tiny_hf_model):
    model = tiny_hf_model("llama")
    with torch.no_grad():
        # layer 1 made useless: both branches write zero (an identity layer)
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
        model.lm_head.weight.mul_(2.0)  # a sharper output distribution: larger loss changes
    evalset = EvalSet(HFLayerStack(model), _self_sampled(model, 40, 16, seed=0), 4)
    early = usefulness_scores(
        evalset, UsefulnessConfig(), sampling=SamplingConfig(target_se=0.05, min_samples=4)
    )
    assert early.eval_sequences <= 16
    assert all(layer.loss_ratio_stderr <= 0.05 for layer in early.layers)
    ratios = [layer.loss_ratio for layer in early.layers]
    assert int(np.argmin(ratios)) == 1  # the identity layer is the least useful ...
    assert not any(1 in pair for pair in early.unresolved)  # ... and resolved as such
    useless = early.layers[1]
    assert useless.loss_ratio == pytest.approx(1.0, abs=1e-5) and useless.loss_ratio_stderr < 1e-5
    capped = usefulness_scores(
        evalset,
        UsefulnessConfig(eval_max_sequences=24),
        sampling=SamplingConfig(target_se=1e-12, min_samples=4),
    )
    assert capped.eval_sequences == 24


class _Fixed(Accumulator):
    """An accumulator whose watched standard errors are given."""

    targets = {"ratio": 0.01, "matrix": 0.05}

    def __init__(self, stderrs: dict[str, float], sequences: int) -> None:
        super().__init__(0, 100)
        self._stderrs = stderrs
        self.sequences = sequences

    def add(self, batch) -> None:
        raise AssertionError("not fed")

    def stderrs(self) -> dict[str, float]:
        return self._stderrs


def test_each_score_group_stops_at_its_default_target_unless_one_target_is_given():
    defaults = SamplingConfig(adaptive=True, min_samples=4)
    assert _Fixed({"ratio": 0.009, "matrix": 0.04}, 8).done(defaults)
    assert not _Fixed({"ratio": 0.009, "matrix": 0.06}, 8).done(defaults)
    assert not _Fixed({"ratio": 0.011, "matrix": 0.04}, 8).done(defaults)
    assert not _Fixed({"ratio": 0.0, "matrix": 0.0}, 3).done(defaults)  # fewer than min_samples
    assert not _Fixed({"ratio": float("inf"), "matrix": 0.0}, 8).done(defaults)
    one = SamplingConfig(target_se=0.02, min_samples=4)
    assert not _Fixed({"ratio": 0.009, "matrix": 0.04}, 8).done(one)
    assert one.stops_early and _Fixed({}, 8).effective_targets(one) == {"ratio": 0.02, "matrix": 0.02}
    assert not SamplingConfig().stops_early and not _Fixed({"ratio": 0.0, "matrix": 0.0}, 8).done(
        SamplingConfig()
    )
    assert _Fixed({}, 100).done(SamplingConfig())  # the cap


def test_the_reference_distribution_is_built_once_per_batch(toy_stack, token_ids):
    class Counting(toy_stack):
        heads = 0

        def unembed(self, h: torch.Tensor) -> torch.Tensor:
            Counting.heads += 1
            return super().unembed(h)

    stack = Counting(_nonlinear_layers(3, 6), hidden=6)
    evalset = EvalSet(stack, token_ids(6, 5), 4)
    accs = [CausalAccumulator(stack, 6), LogitLensAccumulator(stack, 6)]
    feed(evalset, accs)
    # per batch: the baseline head, one per skipped layer, one per decoded state before h_L
    assert Counting.heads == 2 * (1 + 3 + 3)
    assert evalset.references_built == 0
