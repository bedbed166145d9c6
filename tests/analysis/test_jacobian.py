"""Layer Jacobians: exact mode against autograd's full Jacobian, probe products against naive
contractions, closed forms on affine and identity layers, and the estimator against exact values."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.jacobian import (
    JacobianConfig,
    cross_token_vjp_sums,
    jacobian_scores,
    layer_input_output,
    position_vjp_sums,
)

FIELDS = ("jacobian_norm", "off_diagonal_norm", "diagonal_mean", "diagonal_std", "frobenius_norm")


def naive_jacobians(evalset: EvalSet, layer: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Cross and same-position J from torch.autograd.functional.jacobian, plus the per-batch full blocks."""
    stack = evalset.stack
    d = stack.hidden_size
    cross = torch.zeros(d, d, dtype=torch.float64)
    position = torch.zeros(d, d, dtype=torch.float64)
    blocks, tokens = [], 0
    for batch in evalset.batches():
        x = batch.states[layer]
        full = torch.autograd.functional.jacobian(
            lambda h, ctx=batch.ctx: stack.layer_forward(layer, h, ctx), x
        ).double()
        b, s, _ = x.shape
        for row in range(b):
            block = full[row, :, :, row]  # [t', i, t, j]
            cross += block.sum(dim=(0, 2))
            position += torch.einsum("titj->ij", block)
        blocks.append(full)
        tokens += b * s
    return cross / tokens, position / tokens, blocks


def reference_scores(j: torch.Tensor) -> dict[str, float]:
    d = j.shape[0]
    eye = torch.eye(d, dtype=j.dtype)
    diag = torch.diagonal(j)
    return {
        "jacobian_norm": float(torch.sqrt(((j - eye) ** 2).sum())) / d,
        "off_diagonal_norm": float(torch.sqrt(((j * (1 - eye)) ** 2).sum())) / math.sqrt(d * d - d),
        "diagonal_mean": float(diag.mean()),
        "diagonal_std": float(torch.sqrt(((diag - diag.mean()) ** 2).sum() / (d - 1))),
        "frobenius_norm": float(torch.sqrt((j**2).sum())),
        "spectral_norm": float(torch.linalg.svdvals(j)[0]),
    }


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_exact_mode_matches_autograd_jacobian(family, tiny_hf_model, token_ids):
    stack = HFLayerStack(tiny_hf_model(family))
    evalset = EvalSet(stack, token_ids(3, 5), batch_size=2)
    result = jacobian_scores(evalset, JacobianConfig(mode="exact"))
    assert result.num_tokens == 15 and result.num_probes is None
    for layer in range(stack.num_layers):
        cross, position, _ = naive_jacobians(evalset, layer)
        for variant, j in (("cross", cross), ("position", position)):
            scores = next(e.scores for e in result.layers if e.layer == layer and e.variant == variant)
            ref = reference_scores(j)
            for name in FIELDS:
                assert getattr(scores, name).value == pytest.approx(ref[name], rel=1e-5)
                assert getattr(scores, name).stderr == 0.0
            assert scores.spectral_norm == pytest.approx(ref["spectral_norm"], rel=1e-5)
            diagonal = torch.tensor(scores.diagonal, dtype=torch.float64)
            torch.testing.assert_close(diagonal, torch.diagonal(j), rtol=1e-5, atol=1e-7)
    # The two variants differ for attention layers: cross-token terms are real.
    assert result.layers[0].scores.jacobian_norm.value != pytest.approx(
        result.for_variant("position")[0].scores.jacobian_norm.value, rel=1e-3
    )


def test_probe_products_match_naive_contractions(tiny_hf_model, token_ids):
    stack = HFLayerStack(tiny_hf_model("qwen2"))
    evalset = EvalSet(stack, token_ids(2, 6), batch_size=2)
    batch = next(evalset.batches())
    gen = torch.Generator().manual_seed(3)
    probes = torch.randint(0, 2, (5, 16), generator=gen).float() * 2 - 1
    signs = torch.randint(0, 2, (5, 2, 6), generator=gen).float() * 2 - 1
    _, _, (full,) = naive_jacobians(evalset, 1)  # [b, t', i, b, t, j]
    x, y = layer_input_output(stack, batch, 1)
    expected_cross = torch.einsum("ki,btiBTj->kj", probes.double(), full)
    torch.testing.assert_close(cross_token_vjp_sums(y, x, probes), expected_cross, rtol=1e-5, atol=1e-6)
    sig = signs.double()
    expected_position = torch.einsum("kbt,ki,btiBTj,kBT->kj", sig, probes.double(), full, sig)
    torch.testing.assert_close(
        position_vjp_sums(y, x, probes, signs), expected_position, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("mode", ["exact", "randomized"])
def test_affine_layers_give_their_matrix(mode, toy_stack, random_affine_layers, token_ids):
    layers = random_affine_layers(2, 8)
    stack = toy_stack([lambda h, m=m, c=c: h @ m + c for m, c in layers], hidden=8)
    result = jacobian_scores(
        EvalSet(stack, token_ids(2, 4), 2), JacobianConfig(mode=mode, num_probes=400, seed=1)
    )
    for entry in result.layers:
        ref = reference_scores(layers[entry.layer][0].T.double())  # y = x M + c has dy_i/dx_j = M[j, i]
        for name in FIELDS:
            est = getattr(entry.scores, name)
            if mode == "exact":
                assert est.value == pytest.approx(ref[name], rel=1e-5)
            else:
                assert abs(est.value - ref[name]) <= 4 * est.stderr, name
                assert est.stderr < 0.05 * abs(ref[name]), name
        if mode == "exact":
            assert entry.scores.spectral_norm == pytest.approx(ref["spectral_norm"], rel=1e-5)


@pytest.mark.parametrize("mode", ["exact", "randomized"])
def test_identity_layers_are_at_distance_zero(mode, toy_stack, token_ids):
    stack = toy_stack([lambda h: h, lambda h: h + 1.0], hidden=6)
    result = jacobian_scores(EvalSet(stack, token_ids(2, 4), 2), JacobianConfig(mode=mode, num_probes=4))
    for entry in result.layers:
        s = entry.scores
        assert s.jacobian_norm.value == pytest.approx(0.0, abs=1e-7)
        assert s.jacobian_norm.stderr == pytest.approx(0.0, abs=1e-7)
        assert s.diagonal_mean.value == pytest.approx(1.0, abs=1e-7)
        assert s.frobenius_norm.value == pytest.approx(math.sqrt(6), rel=1e-6)
    assert result.global_metrics()["jacobian_cross_identity_preservation_score"] == 1.0


def test_randomized_estimates_are_within_their_standard_errors(tiny_hf_model, token_ids):
    stack = HFLayerStack(tiny_hf_model("llama"))
    evalset = EvalSet(stack, token_ids(2, 6), batch_size=2)
    exact = jacobian_scores(evalset, JacobianConfig(mode="exact"))
    rand = jacobian_scores(evalset, JacobianConfig(mode="randomized", num_probes=64, seed=5))
    z_scores = []
    for e, r in zip(exact.layers, rand.layers):
        assert (e.layer, e.variant) == (r.layer, r.variant)
        for name in FIELDS:
            est = getattr(r.scores, name)
            assert est.stderr > 0
            z_scores.append((est.value - getattr(e.scores, name).value) / est.stderr)
    assert max(abs(z) for z in z_scores) < 4.0
    # Errors are not systematically one-sided.
    assert abs(sum(z_scores) / len(z_scores)) < 1.0


def test_jacobian_config_validation():
    with pytest.raises(ValueError):
        JacobianConfig(mode="fast")
    with pytest.raises(ValueError):
        JacobianConfig(variants=("diagonal",))
    with pytest.raises(ValueError):
        JacobianConfig(num_probes=2)
