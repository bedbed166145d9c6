"""Evaluation batches: ranges cut across batch boundaries, caching and the baseline loss."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack


def test_ranges_cache_and_baseline(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(5, 6)
    evalset = EvalSet(HFLayerStack(model), ids, batch_size=2)
    assert evalset.num_batches() == 3 and evalset.num_batches(1, 4) == 2
    parts = list(evalset.batches(1, 4))
    assert [p.input_ids.shape[0] for p in parts] == [1, 2]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), ids[1:4])
    reference = hf_reference.states(model, ids[1:4])
    torch.testing.assert_close(torch.cat([p.states[2] for p in parts]), reference[2], rtol=1e-5, atol=1e-6)
    assert evalset.baseline_loss(1, 4) == pytest.approx(hf_reference.loss(model, ids[1:4]), rel=1e-5)
    list(evalset.batches())
    assert evalset.forwards_run == 3  # every batch ran once despite four passes


def test_no_cache_when_over_budget(toy_stack, token_ids):
    evalset = EvalSet(toy_stack([lambda h: h], hidden=4), token_ids(2, 3), 1, cache_bytes=10)
    list(evalset.batches())
    list(evalset.batches())
    assert evalset.forwards_run == 4


def test_cache_keeps_the_first_batches_that_fit(toy_stack, token_ids):
    one_batch = 2 * 3 * 4 * 4  # two states of [1, 3, 4] fp32
    evalset = EvalSet(toy_stack([lambda h: h], hidden=4), token_ids(3, 3), 1, cache_bytes=2 * one_batch)
    list(evalset.batches())
    list(evalset.batches())
    assert evalset.forwards_run == 4  # batches 0 and 1 cached, batch 2 recomputed


def test_rejects_bad_input(toy_stack, token_ids):
    stack = toy_stack([lambda h: h], hidden=4)
    with pytest.raises(ValueError, match="token ids"):
        EvalSet(stack, token_ids(2, 3) + 100, 1)
    with pytest.raises(ValueError):
        EvalSet(stack, token_ids(2, 1), 1)
