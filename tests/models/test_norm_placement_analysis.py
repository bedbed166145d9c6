"""The offline analysis suite runs on every norm placement through the megatron adapter.

The adapter's per-layer states are the streams the reference hands from layer to layer (Post-LN:
after the norm), its head is megatron's own forward (identity final norm for Post-LN, embedding
norm for Peri-LN), and every metric of the suite gives finite numbers.
"""

import math

import pytest
import torch

from megatron_cod import platform
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.megatron_adapter import MegatronLayerStack
from megatron_cod.analysis.suite import METRICS, SuiteConfig, run_suite
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.models import build_gpt_model
from reference_gpt import RefArch, forward

VOCAB, SEQ, LAYERS = 128, 16, 4
PLACEMENTS = {"post": dict(norm_placement="post"),
              "peri": dict(norm_placement="peri", peri_ln_embedding_norm=True),
              "mix": dict(norm_placement="mix", mix_ln_alpha=0.5, num_experts=4, moe_ffn_hidden_size=32)}


@pytest.fixture(scope="module", autouse=True)
def world():
    platform.initialize(seed=13)
    yield
    platform.teardown()


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_analysis_suite_on_each_placement(placement):
    cfg = ModelConfig(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=SEQ,
                      **PLACEMENTS[placement])
    model = build_gpt_model(cfg, VOCAB, ParallelConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stack = MegatronLayerStack(model)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(2))
    states = stack.capture_states(ids, stack.prepare(ids))
    with torch.no_grad():
        logits = model(ids, torch.arange(SEQ).unsqueeze(0).expand(4, -1), None)
        _, records = forward(ids, dict(model.named_parameters()), RefArch(
            num_layers=LAYERS, heads=4, groups=4, topk=cfg.moe_router_topk, placement=cfg.norm_placement,
            mix_alpha=cfg.mix_ln_alpha, embedding_norm=cfg.peri_ln_embedding_norm))
    torch.testing.assert_close(stack.head(states[-1]), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states[0], records[0].h_in, rtol=1e-5, atol=1e-5)
    for state, record in zip(states[1:], records):
        torch.testing.assert_close(state, record.h_out, rtol=1e-5, atol=1e-5)

    results = run_suite(EvalSet(stack, ids, batch_size=2), SuiteConfig(metrics=METRICS)).global_metrics()
    assert results and all(math.isfinite(v) for v in results.values()), results
