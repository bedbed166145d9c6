"""Residual profile against direct formulas on HF hidden states."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.residual import ResidualConfig, residual_profile


def test_matches_direct_formulas(tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("qwen2")
    ids = token_ids(3, 5)
    result = residual_profile(EvalSet(HFLayerStack(model), ids, 2), ResidualConfig())
    h = hf_reference.states(model, ids)
    for l, state in enumerate(h):
        centered = state - state.mean(-1, keepdim=True)
        assert result.variance[l] == pytest.approx(float((centered**2).sum(-1).div(15).mean()), rel=1e-5)
        assert result.norm[l] == pytest.approx(float(state.pow(2).sum(-1).sqrt().mean()), rel=1e-5)
        assert result.rms[l] == pytest.approx(float(state.pow(2).mean(-1).sqrt().mean()), rel=1e-5)
    for l in range(3):
        update = (h[l + 1] - h[l]).pow(2).sum(-1).sqrt()
        assert result.update_norm[l] == pytest.approx(float(update.mean()), rel=1e-5)
        assert result.relative_update[l] == pytest.approx(
            float((update / h[l].pow(2).sum(-1).sqrt()).mean()), rel=1e-5
        )
    with torch.no_grad():
        normed = model.model.norm(h[-1])
    assert result.final_norm_variance == pytest.approx(float(normed.var(-1).mean()), rel=1e-5)
