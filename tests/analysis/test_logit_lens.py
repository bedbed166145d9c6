"""Logit lens against decoding HF hidden states by hand."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.logit_lens import LogitLensConfig, logit_lens_scores


@pytest.mark.parametrize("family", ["llama", "olmoe"])
def test_matches_manual_decoding(family, tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model(family)
    ids = token_ids(3, 6)
    result = logit_lens_scores(EvalSet(HFLayerStack(model), ids, 2), LogitLensConfig())
    states = hf_reference.states(model, ids)
    with torch.no_grad():
        decoded = [model.lm_head(model.model.norm(h)) for h in states]
    final = torch.log_softmax(decoded[-1], -1)
    assert len(result.states) == 4
    for entry, logits in zip(result.states, decoded):
        logp = torch.log_softmax(logits, -1)
        kl = torch.nn.functional.kl_div(logp, final, log_target=True, reduction="none").sum(-1).mean()
        assert entry.kl_to_final == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
        agreement = (logits.argmax(-1) == decoded[-1].argmax(-1)).float().mean()
        assert entry.top1_agreement == pytest.approx(float(agreement))
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
        assert entry.loss == pytest.approx(float(ce), rel=1e-5)
    assert result.states[-1].kl_to_final == pytest.approx(0.0, abs=1e-6)
    assert result.states[-1].top1_agreement == 1.0
