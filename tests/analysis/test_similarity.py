"""Block Influence, angular distance and pruning curves against direct formulas and HF's forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.similarity import (
    SimilarityConfig,
    angular_blocks,
    bi_removal_order,
    similarity_scores,
)


def test_identity_layers_have_zero_influence_and_distance(toy_stack, token_ids):
    stack = toy_stack([lambda h: h, lambda h: 2.0 * h], hidden=5)  # scaling keeps the direction
    result = similarity_scores(EvalSet(stack, token_ids(3, 4), 2), SimilarityConfig(pruning=False))
    assert result.block_influence == pytest.approx([0.0, 0.0], abs=1e-6)
    assert result.block_influence_last == pytest.approx([0.0, 0.0], abs=1e-6)
    assert np.nanmax(result.angular_all) == pytest.approx(0.0, abs=1e-3)  # arccos near 1 is steep in fp32
    assert result.pruning_bi == []


def test_matches_direct_formulas_and_pruned_hf_models(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(5, 6)
    result = similarity_scores(EvalSet(HFLayerStack(model), ids, 2), SimilarityConfig(prune_max_sequences=3))
    h = hf_reference.states(model, ids)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
    num = 3
    for l in range(num):
        assert result.block_influence[l] == pytest.approx(float(1 - cos(h[l], h[l + 1]).mean()), rel=1e-5)
        assert result.block_influence_last[l] == pytest.approx(
            float(1 - cos(h[l][:, -1], h[l + 1][:, -1]).mean()), rel=1e-5
        )
        for n in range(1, num - l + 1):
            angles = torch.arccos(cos(h[l], h[l + n]).clamp(-1, 1)) / math.pi
            assert result.angular_all[l, n - 1] == pytest.approx(float(angles.mean()), rel=1e-4)
            assert result.angular_last[l, n - 1] == pytest.approx(float(angles[:, -1].mean()), rel=1e-4)
    assert np.isnan(result.angular_all[1, 2]) and np.isnan(result.angular_all[2, 1])

    order = bi_removal_order(result.block_influence)
    assert [s.removed for s in result.pruning_bi] == [[], sorted(order[:1]), sorted(order[:2])]
    assert [s.removed for s in result.pruning_angular] == [[]] + angular_blocks(result.angular_last)
    layers = list(model.model.layers)
    for step in result.pruning_bi + result.pruning_angular:
        kept = [m for i, m in enumerate(layers) if i not in step.removed]
        restore = hf_reference.with_layers(model, kept)
        try:
            loss = hf_reference.loss(model, ids[:3])
        finally:
            restore()
        assert step.loss == pytest.approx(loss, rel=1e-5)
        assert step.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_removal_orders():
    assert bi_removal_order([0.3, 0.1, 0.2, 0.1]) == [1, 3, 2, 0]
    angular = np.array([[0.5, 0.2, 0.4], [0.1, 0.3, np.nan], [0.2, np.nan, np.nan]])
    assert angular_blocks(angular) == [[1], [0, 1]]
