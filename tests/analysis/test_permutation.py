"""Permutation score: commuting layers give 0, HF reordered forward gives the same losses, reductions."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.permutation import (
    PairScore,
    PermutationConfig,
    PermutationResult,
    parse_pairs,
    permutation_scores,
)


def test_swapping_commuting_layers_scores_zero(toy_stack, token_ids):
    gen = torch.Generator().manual_seed(0)
    diag_a, diag_b = torch.rand(6, generator=gen) + 0.5, torch.rand(6, generator=gen) + 0.5
    mixing = torch.randn(6, 6, generator=gen)
    layers = [lambda h: torch.tanh(h @ mixing), lambda h: h * diag_a, lambda h: h * diag_b]
    stack = toy_stack(layers, hidden=6)
    result = permutation_scores(EvalSet(stack, token_ids(3, 5), 2), PermutationConfig())
    scores = {(p.l1, p.l2): p.score for p in result.pairs}
    assert scores[(1, 2)] == pytest.approx(0.0, abs=1e-6)  # diagonal scalings commute
    assert scores[(0, 1)] > 1e-3 and scores[(0, 2)] > 1e-3


def test_matches_naive_reordered_hf_model(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(3, 6)
    result = permutation_scores(EvalSet(HFLayerStack(model), ids, 2), PermutationConfig())
    baseline = hf_reference.loss(model, ids)
    assert result.baseline_loss == pytest.approx(baseline, rel=1e-5)
    layers = list(model.model.layers)
    assert [(p.l1, p.l2) for p in result.pairs] == [(0, 1), (0, 2), (1, 2)]
    for pair in result.pairs:
        order = list(layers)
        order[pair.l1], order[pair.l2] = layers[pair.l2], layers[pair.l1]
        restore = hf_reference.with_layers(model, order)
        try:
            loss = hf_reference.loss(model, ids)
        finally:
            restore()
        assert pair.loss == pytest.approx(loss, rel=1e-5)
        assert pair.score == pytest.approx(abs(baseline - loss) / baseline, rel=1e-4)


def test_global_reductions_by_hand():
    pairs = [PairScore(0, 1, 0.0, 0.2), PairScore(1, 3, 0.0, 0.4)]
    result = PermutationResult(baseline_loss=1.0, num_layers=4, decay=0.9, pairs=pairs)
    metrics = result.global_metrics()
    assert metrics["permutation_score_mean"] == pytest.approx(0.3)
    assert metrics["permutation_score_normalized"] == pytest.approx(0.6 / 6)
    per_layer = [0.2, (0.2 * 0.9 + 0.4 * 0.9) / 2, 0.4 * 0.9**3]
    assert metrics["permutation_score_weighted"] == pytest.approx(sum(per_layer) / 3)
    assert result.matrix()[1, 3] == 0.4


def test_parse_pairs():
    assert parse_pairs("all", 3) == [(0, 1), (0, 2), (1, 2)]
    assert parse_pairs("adjacent", 3) == [(0, 1), (1, 2)]
    assert parse_pairs("2-0, 1-2,0-2", 3) == [(0, 2), (1, 2)]
    for bad in ("1-1", "0-3", "0:1", ""):
        with pytest.raises(ValueError):
            parse_pairs(bad, 3)
