"""What depth telemetry measures under each norm placement, against the plain-PyTorch reference.

- residual variance ``var``: the stream a layer hands on, h_{l+1} (Post-LN: after its norm);
- branch variance ``attn_var`` / ``mlp_var``: the branch as it enters the residual add (Peri-LN:
  after its output norm; Post-LN: the raw branch F(h), added before the norm);
- ``update_norm``: ||h_{l+1} - h_l||, which equals the sum of the branches for Pre-LN and Peri-LN
  but not for Post-LN, whose stream is renormalised;
- ``var_final_norm``: after the final norm, or equal to ``var`` for Post-LN, which has none.
"""

import pytest
import torch

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig, TelemetryConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.telemetry import DepthTelemetry
from megatron_cod.telemetry import metrics as M
from reference_gpt import RefArch, forward, rms_norm

VOCAB, SEQ, LAYERS = 64, 16, 4
PLACEMENTS = {"pre": dict(), "post": dict(norm_placement="post"),
              "peri": dict(norm_placement="peri", peri_ln_embedding_norm=True),
              "mix": dict(norm_placement="mix", mix_ln_alpha=0.5)}


@pytest.fixture(scope="module", autouse=True)
def world():
    platform.initialize(seed=9)
    yield
    platform.teardown()


def _mean(per_token: torch.Tensor) -> float:
    return per_token.double().mean().item()


@pytest.mark.parametrize("num_experts", [None, 4])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_telemetry_measures_the_documented_streams(placement, num_experts):
    cfg = ModelConfig(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, seq_length=SEQ, ffn_hidden_size=64,
                      num_experts=num_experts, moe_ffn_hidden_size=32 if num_experts else None,
                      **PLACEMENTS[placement])
    model = build_gpt_model(cfg, VOCAB, ParallelConfig())
    tel = DepthTelemetry([model], TelemetryConfig(enabled=True, interval=1, attention_interval=0, weight_interval=0))
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    tel.begin_step(0)
    model(tokens, torch.arange(SEQ).unsqueeze(0), None, labels=tokens).float().mean().backward()
    tel.after_backward(0)
    out = tel.end_step(0)
    tel.remove()

    params = {name: p.detach() for name, p in model.named_parameters()}
    arch = RefArch(num_layers=LAYERS, heads=4, groups=4, topk=cfg.moe_router_topk, placement=cfg.norm_placement,
                   mix_alpha=cfg.mix_ln_alpha, embedding_norm=cfg.peri_ln_embedding_norm)
    with torch.no_grad():
        _, records = forward(tokens, params, arch)
    for n, rec in enumerate(records, start=1):
        key = lambda stat: f"depth/{stat}/layer_{n:02d}"  # noqa: E731
        assert out[key("var")] == pytest.approx(_mean(M.per_token_variance(rec.h_out)), rel=1e-4)
        assert out[key("attn_var")] == pytest.approx(_mean(M.per_token_variance(rec.attn_branch)), rel=1e-4)
        assert out[key("mlp_var")] == pytest.approx(_mean(M.per_token_variance(rec.mlp_branch)), rel=1e-4)
        assert out[key("update_norm")] == pytest.approx(_mean(M.per_token_update_norm(rec.h_in, rec.h_out)), rel=1e-4)
        branch_sum = _mean(M.per_token_norm(rec.attn_branch + rec.mlp_branch))
        if arch.kind(n) == "post":
            assert out[key("update_norm")] != pytest.approx(branch_sum, rel=1e-2)
        else:
            assert out[key("update_norm")] == pytest.approx(branch_sum, rel=1e-4)
    last = records[-1].h_out
    final = last if placement == "post" else rms_norm(last, params["decoder.final_layernorm.weight"], arch.eps)
    assert out[f"depth/var_final_norm/layer_{LAYERS:02d}"] == pytest.approx(
        _mean(M.per_token_variance(final)), rel=1e-4)
