"""DepthTelemetry on a real megatron GPTModel (single process): semantics, recompute, lifecycle.

References are independent: closed forms from hand-set weights, or the model's own tensors
captured by the test's hooks and reduced with plain torch code.
"""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig, TelemetryConfig
from megatron_cod.models import build_gpt_model
from megatron_cod.telemetry import DepthTelemetry
from megatron_cod.telemetry import metrics as M

VOCAB = 64
SEQ = 16


def tiny_gpt(num_experts: int | None = None, **overrides) -> torch.nn.Module:
    kw = dict(num_layers=3, hidden_size=32, num_attention_heads=4, seq_length=SEQ, num_experts=num_experts,
              moe_ffn_hidden_size=32 if num_experts else None, moe_router_topk=2)
    kw.update(overrides)
    return build_gpt_model(ModelConfig(**kw), VOCAB, ParallelConfig())


def telemetry_config(**overrides) -> TelemetryConfig:
    kw = dict(enabled=True, interval=1, attention_interval=0, weight_interval=0, attention_topk=2,
              attention_max_tokens=SEQ)
    kw.update(overrides)
    return TelemetryConfig(**kw)


def token_batches(*batch_sizes: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (b, SEQ), generator=g) for b in batch_sizes]


def forward_backward(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    for tokens in batches:
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        model(tokens, pos, None, labels=tokens).float().mean().backward()


def telemetry_step(model: torch.nn.Module, tel, batches: list[torch.Tensor], iteration: int = 0) -> dict:
    tel.begin_step(iteration)
    forward_backward(model, batches)
    tel.after_backward(iteration)
    return tel.end_step(iteration)


def layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.decoder.layers)


def zero_branches(model: torch.nn.Module, attention: bool = True, mlp: bool = True) -> None:
    """Make the attention and/or MLP (MoE) branch output exactly zero via their output projections."""
    with torch.no_grad():
        for layer in layers(model):
            if attention:
                layer.self_attention.linear_proj.weight.zero_()
            if mlp:
                experts = getattr(layer.mlp, "experts", None)
                fc2s = [e.linear_fc2 for e in experts.local_experts] if experts is not None else [layer.mlp.linear_fc2]
                for fc2 in fc2s:
                    fc2.weight.zero_()


@pytest.fixture(scope="module", autouse=True)
def world():
    platform.initialize(seed=7)
    yield
    platform.teardown()


def key(stat: str, n: int) -> str:
    return f"depth/{stat}/layer_{n:02d}"


def set_embedding_closed_form(model: torch.nn.Module) -> torch.Tensor:
    """Embedding of token v = c_v * u with u = (+1, -1, ...) and c_v = 0.1 (v + 1); returns c."""
    weight = model.embedding.word_embeddings.weight
    d = weight.shape[1]
    u = torch.tensor([(-1.0) ** i for i in range(d)])
    c = 0.1 * (torch.arange(weight.shape[0], dtype=torch.float32) + 1)
    with torch.no_grad():
        weight.copy_(c[:, None] * u[None, :])
    return c


@pytest.mark.parametrize("num_experts", [None, 4])
def test_zeroed_branches_give_identity_updates_and_closed_form_variance(num_experts):
    model = tiny_gpt(num_experts)
    zero_branches(model)
    c = set_embedding_closed_form(model)
    d = model.config.hidden_size
    eps = model.config.layernorm_epsilon
    batches = token_batches(2, 1)
    tel = DepthTelemetry([model], telemetry_config())
    out = telemetry_step(model, tel, batches)
    ct = torch.cat([c[b.flatten()] for b in batches]).double()
    # u has mean 0 and mean square 1: Var_unbiased(c u) = c^2 d/(d-1), RMS(c u) = |c|.
    want_var = (ct.square() * d / (d - 1)).mean().item()
    want_final = (ct.square() / (ct.square() + eps) * d / (d - 1)).mean().item()
    for n in range(1, 4):
        assert out[key("update_norm", n)] == pytest.approx(0.0, abs=1e-7)
        assert out[key("rel_update", n)] == pytest.approx(0.0, abs=1e-7)
        assert out[key("cosine", n)] == pytest.approx(1.0, abs=1e-6)
        assert out[key("block_influence", n)] == pytest.approx(0.0, abs=1e-6)
        for branch in ("attn", "mlp"):
            assert out[key(f"{branch}_var", n)] == 0.0
            assert out[key(f"{branch}_norm", n)] == 0.0
        assert out[key("var", n)] == pytest.approx(want_var, rel=1e-5)
        assert out[key("rms", n)] == pytest.approx(ct.abs().mean().item(), rel=1e-5)
    assert out[key("var_final_norm", 3)] == pytest.approx(want_final, rel=1e-5)
    assert key("var_final_norm", 2) not in out
    tel.remove()


def test_scaling_the_attention_projection_scales_branch_statistics():
    model = tiny_gpt()
    tel = DepthTelemetry([model], telemetry_config())
    batches = token_batches(2)
    before = telemetry_step(model, tel, batches)
    with torch.no_grad():
        layers(model)[0].self_attention.linear_proj.weight.mul_(3.0)
    after = telemetry_step(model, tel, batches)
    # Layer 1's input does not change, so its attention branch is exactly 3x: variance 9x.
    assert after[key("attn_var", 1)] == pytest.approx(9 * before[key("attn_var", 1)], rel=1e-5)
    assert after[key("attn_norm", 1)] == pytest.approx(3 * before[key("attn_norm", 1)], rel=1e-5)
    tel.remove()


def test_moe_branch_statistic_is_the_branch_not_the_block_output():
    model = tiny_gpt(num_experts=4)
    captured: dict[int, list[torch.Tensor]] = {}
    hooks = [layer.mlp.register_forward_hook(
        lambda m, a, o, n=layer.layer_number: captured.setdefault(n, []).append(o[0].detach().clone()))
        for layer in layers(model)]
    tel = DepthTelemetry([model], telemetry_config())
    out = telemetry_step(model, tel, token_batches(2, 2))
    for h in hooks:
        h.remove()
    for n, outs in captured.items():
        branch = torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])
        assert out[key("mlp_var", n)] == pytest.approx(branch.var(dim=-1).mean().item(), rel=1e-5)
        assert out[key("mlp_norm", n)] == pytest.approx(branch.norm(dim=-1).mean().item(), rel=1e-5)
        assert out[key("mlp_var", n)] < 0.5 * out[key("var", n)]

    # With the experts' output projections zeroed the MoE branch is exactly zero, while the block
    # output is not, and the whole update of each layer is its attention branch.
    zero_branches(model, attention=False)
    out = telemetry_step(model, tel, token_batches(2, 2))
    for n in range(1, 4):
        assert out[key("mlp_var", n)] == 0.0 and out[key("mlp_norm", n)] == 0.0
        assert out[key("var", n)] > 0.0
        assert out[key("update_norm", n)] == pytest.approx(out[key("attn_norm", n)], rel=1e-5)
    tel.remove()


def test_token_weighted_over_unequal_micro_batches_and_layer_norms():
    model = tiny_gpt()
    outputs: dict[int, list[torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(
        lambda m, a, o, n=layer.layer_number: outputs.setdefault(n, []).append(o[0].detach().clone()))
        for layer in layers(model)]
    for p in model.parameters():
        p.grad = None
    tel = DepthTelemetry([model], telemetry_config())
    out = telemetry_step(model, tel, token_batches(1, 3))
    for h in hooks:
        h.remove()
    for layer in layers(model):
        n = layer.layer_number
        # 1 sequence then 3: a plain mean of the two micro-batch means would differ.
        tokens = torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs[n]])
        assert out[key("var", n)] == pytest.approx(tokens.var(dim=-1).mean().item(), rel=1e-5)
        params = list(layer.parameters())
        want_param = math.sqrt(sum(p.detach().double().square().sum().item() for p in params))
        want_grad = math.sqrt(sum(p.grad.double().square().sum().item() for p in params))
        assert out[key("param_norm", n)] == pytest.approx(want_param, rel=1e-5)
        assert out[key("grad_norm", n)] == pytest.approx(want_grad, rel=1e-5)
    tel.remove()


@pytest.mark.parametrize("params_in_forward", [True, False])
def test_parameter_norms_follow_the_optimizer_step_by_step(params_in_forward):
    """Parameter norms are taken in each layer's first forward (or after the backward when megatron
    gathers parameters during the forward): either way, each step reports the weights it trained on,
    after the previous step's update."""
    model = tiny_gpt(num_experts=4)
    tel = DepthTelemetry([model], telemetry_config())
    tel._params_in_forward = params_in_forward  # the path chosen from the DDP config
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        model.zero_grad()
        want = {
            layer.layer_number: math.sqrt(sum(p.detach().double().square().sum().item() for p in layer.parameters()))
            for layer in layers(model)
        }
        out = telemetry_step(model, tel, token_batches(2, 1, seed=step), step)
        optimizer.step()
        for n, norm in want.items():
            assert out[key("param_norm", n)] == pytest.approx(norm, rel=1e-5), (step, n)
    assert want[1] != pytest.approx(math.sqrt(sum(p.detach().double().square().sum().item()
                                                  for p in layers(model)[0].parameters())), rel=1e-6)
    tel.remove()


def test_moe_routing_statistics_and_megatron_aux_losses():
    model = tiny_gpt(num_experts=4)
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = [layer.mlp.router.register_forward_hook(
        lambda m, a, o, n=layer.layer_number: seen.setdefault(n, []).append(
            (a[0].detach().clone(), o[1].detach().clone())))
        for layer in layers(model)]
    clear_aux_losses_tracker()
    tel = DepthTelemetry([model], telemetry_config())
    batches = token_batches(2, 1)
    out = telemetry_step(model, tel, batches)
    for h in hooks:
        h.remove()
    tracker = get_moe_layer_wise_logging_tracker()
    for layer in layers(model):
        n = layer.layer_number
        router = layer.mlp.router
        inputs = torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in seen[n]])
        maps = torch.cat([m for _, m in seen[n]])
        counts = maps.sum(dim=0).double()
        for e in range(4):
            assert out[f"moe/tokens/layer_{n:02d}/expert_{e:02d}"] == counts[e].item()
        assert out[f"moe/imbalance/layer_{n:02d}"] == pytest.approx((counts.max() / counts.mean()).item())
        assert out[f"moe/dead_experts/layer_{n:02d}"] == float((counts == 0).sum().item())
        logits = inputs.float() @ router.weight.float().t()
        p = torch.softmax(logits.double(), dim=-1)
        assert out[f"moe/router_entropy/layer_{n:02d}"] == pytest.approx(
            (-(p * p.log()).sum(-1)).mean().item(), rel=1e-5)
        # megatron logs its tracker value times 1/num_microbatches: the mean per micro-batch.
        for name in ("load_balancing_loss", "z_loss"):
            want = tracker[name]["values"][n - 1].item() / len(batches)
            assert out[f"moe/{name}/layer_{n:02d}"] == pytest.approx(want, rel=1e-6)
    tel.remove()


def test_aux_losses_keep_their_precision_after_a_long_run():
    """megatron-core never clears its aux-loss tracker in our training: after many steps its fp32 sums
    are large, and an increment taken as a difference of them would lose most of its digits."""
    model = tiny_gpt(num_experts=4, moe_z_loss_coeff=0.001)
    clear_aux_losses_tracker()
    tel = DepthTelemetry([model], telemetry_config())
    batches = token_batches(2, 1)
    first = telemetry_step(model, tel, batches)  # no optimizer step: the next step sees the same losses
    for entry in get_moe_layer_wise_logging_tracker().values():
        entry["values"] += 1e5  # what a long run accumulates
    second = telemetry_step(model, tel, batches)
    aux = [k for k in first if k.startswith(("moe/load_balancing_loss/", "moe/z_loss/"))]
    assert len(aux) == 2 * len(layers(model))
    for key in aux:
        assert second[key] == pytest.approx(first[key], rel=1e-6), key
    tel.remove()


@pytest.mark.parametrize("zero_in", ["our config", "megatron config"])
def test_z_loss_coefficient_zero_is_off_and_every_metric_stays_finite(zero_in):
    """--moe-z-loss-coeff 0: megatron given a coefficient of 0 still tracks z_loss / 0 = NaN. Our
    translation hands it None, and the collector ignores a megatron config that says 0 directly."""
    if zero_in == "our config":
        model = tiny_gpt(num_experts=4, moe_z_loss_coeff=0.0)
    else:
        model = tiny_gpt(num_experts=4, moe_z_loss_coeff=0.001)
        model.config.moe_z_loss_coeff = 0.0  # the config object every router reads
    clear_aux_losses_tracker()
    tel = DepthTelemetry([model], telemetry_config(attention_interval=1, weight_interval=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for step in range(2):
        model.zero_grad()
        out = telemetry_step(model, tel, token_batches(2, 1, seed=step), step)
        optimizer.step()
        assert [k for k, v in out.items() if not math.isfinite(v)] == []
        assert key("grad_norm", 1) in out and any(k.startswith("attn/") for k in out)
        assert any(k.startswith("moe/load_balancing_loss/") for k in out)
        assert not any(k.startswith("moe/z_loss/") for k in out)
    tel.remove()
    clear_aux_losses_tracker()
    if zero_in == "our config":
        assert model.config.moe_z_loss_coeff is None  # megatron does not compute it at all


@pytest.mark.parametrize("groups", [4, 2])
def test_attention_sample_matches_the_models_own_probabilities(groups):
    model = tiny_gpt(group_query_attention=groups != 4, num_query_groups=groups)
    nq, topk = 10, 2
    probs: dict[int, list[torch.Tensor]] = {}
    hooks = [layer.self_attention.core_attention.scale_mask_softmax.register_forward_hook(
        lambda m, a, o, n=layer.layer_number: probs.setdefault(n, []).append(o.detach().clone()))
        for layer in layers(model)]
    cfg = telemetry_config(attention_interval=1, attention_max_tokens=nq, attention_topk=topk)
    tel = DepthTelemetry([model], cfg)
    out = telemetry_step(model, tel, token_batches(2, 2))
    for h in hooks:
        h.remove()
    for n, per_mb in probs.items():
        sample = per_mb[0][0, :, SEQ - nq :, :].double()  # first micro-batch, sequence 0, last nq rows
        ent_means, top_means = [], []
        for h in range(sample.shape[0]):
            ents, tops = [], []
            for r in range(nq):
                visible = SEQ - nq + r + 1
                row = sample[h, r, :visible]
                if visible > 1:
                    ents.append((-(row * row.clamp_min(1e-300).log()).sum() / math.log(visible)).item())
                if visible > topk:
                    tops.append(row.sort(descending=True).values[:topk].sum().item())
            ent_means.append(sum(ents) / len(ents))
            top_means.append(sum(tops) / len(tops))
            assert out[f"attn/entropy/layer_{n:02d}/head_{h:02d}"] == pytest.approx(ent_means[-1], abs=1e-5)
            assert out[f"attn/topk_mass/layer_{n:02d}/head_{h:02d}"] == pytest.approx(top_means[-1], abs=1e-5)
        assert out[f"attn/entropy/layer_{n:02d}"] == pytest.approx(sum(ent_means) / 4, abs=1e-5)
    tel.remove()


def test_weight_statistics_pool_experts_per_matrix_family():
    model = tiny_gpt(num_experts=4)
    eps = 0.05
    tel = DepthTelemetry([model], telemetry_config(interval=0, weight_interval=1, weight_eps=eps))
    out = telemetry_step(model, tel, token_batches(1))
    assert not any(k.startswith("depth/") for k in out)
    for layer in layers(model):
        n = layer.layer_number
        families = {
            "linear_qkv": [layer.self_attention.linear_qkv.weight],
            "linear_proj": [layer.self_attention.linear_proj.weight],
            "router": [layer.mlp.router.weight],
            "experts.linear_fc1": [e.linear_fc1.weight for e in layer.mlp.experts.local_experts],
            "experts.linear_fc2": [e.linear_fc2.weight for e in layer.mlp.experts.local_experts],
        }
        assert {k.rsplit("/", 1)[1] for k in out if k.startswith(f"weights/hoyer/layer_{n:02d}/")} == set(families)
        for family, ws in families.items():
            pooled = torch.cat([w.detach().flatten() for w in ws])
            assert out[f"weights/sparsity/layer_{n:02d}/{family}"] == pytest.approx(
                M.weight_sparsity(pooled, eps).item())
            assert out[f"weights/hoyer/layer_{n:02d}/{family}"] == pytest.approx(
                M.hoyer_sparsity(pooled).item(), rel=1e-5)
    tel.remove()


@pytest.mark.parametrize("num_experts", [None, 4])
def test_activation_recompute_does_not_double_count(num_experts):
    plain = tiny_gpt(num_experts)
    recomputed = tiny_gpt(num_experts, recompute_granularity="full", recompute_method="uniform",
                          recompute_num_layers=1)
    recomputed.load_state_dict(plain.state_dict())
    calls: list[bool] = []
    hook = layers(recomputed)[0].register_forward_hook(lambda m, a, o: calls.append(torch.is_grad_enabled()))
    batches = token_batches(2, 1)
    results = []
    for model in (plain, recomputed):
        clear_aux_losses_tracker()
        tel = DepthTelemetry([model], telemetry_config(attention_interval=1))
        results.append(telemetry_step(model, tel, batches))
        tel.remove()
    hook.remove()
    # The recompute really ran: each micro-batch went through layer 1 twice (no-grad, then re-run).
    assert calls == [False, True] * len(batches)
    want, got = results
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k


def test_hooks_exist_only_during_collection_steps():
    model = tiny_gpt(num_experts=4)

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    baseline = hook_count()
    tel = DepthTelemetry([model], telemetry_config(interval=2, attention_interval=3))
    batches = token_batches(1)
    tel.begin_step(1)
    assert hook_count() == baseline
    forward_backward(model, batches)
    tel.after_backward(1)
    assert tel.end_step(1) == {}

    tel.begin_step(2)
    assert hook_count() > baseline
    assert all("gating" in vars(layer.mlp.router) for layer in layers(model))
    forward_backward(model, batches)
    tel.after_backward(2)
    out = tel.end_step(2)
    assert key("var", 1) in out and not any(k.startswith("attn/") for k in out)
    assert hook_count() == baseline
    assert not any("gating" in vars(layer.mlp.router) for layer in layers(model))

    out = telemetry_step(model, tel, batches, iteration=3)
    assert any(k.startswith("attn/") for k in out) and key("var", 1) not in out
    tel.remove()
    assert hook_count() == baseline


def test_disabled_collects_nothing():
    model = tiny_gpt()
    tel = DepthTelemetry([model], telemetry_config(enabled=False, attention_interval=1, weight_interval=1))
    assert telemetry_step(model, tel, token_batches(1)) == {}
    tel.remove()
