"""Usefulness: closed form on affine layers, and the naive fit-and-replace through HF's forward."""

from __future__ import annotations

import pytest
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.usefulness import StreamingLeastSquares, UsefulnessConfig, usefulness_scores


def test_affine_layers_are_reproduced_exactly(toy_stack, random_affine_layers, token_ids):
    layers = random_affine_layers(3, 6, scale=1.0)
    stack = toy_stack([lambda h, m=m, c=c: h @ m + c for m, c in layers], hidden=6)
    result = usefulness_scores(EvalSet(stack, token_ids(4, 8), 2), UsefulnessConfig())
    for entry in result.layers:
        assert entry.loss_ratio == pytest.approx(1.0, abs=1e-5)
        assert entry.fit_relative_residual == pytest.approx(0.0, abs=1e-6)
        assert not entry.useful
    assert result.score == 0.0


def test_streaming_fit_matches_lstsq_on_the_stacked_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 5, generator=gen)
    y = torch.tanh(x @ torch.randn(5, 5, generator=gen)) + 0.3
    system = StreamingLeastSquares(5)
    system.add(x[:1], y[:1])
    system.add(x[1:], y[1:])
    affine, residual = system.solve()
    x1 = torch.cat([x.reshape(-1, 5), torch.ones(60, 1)], 1).double()
    solution = torch.linalg.lstsq(x1, y.reshape(-1, 5).double()).solution
    torch.testing.assert_close(affine.weight.double(), solution[:-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(affine.bias.double(), solution[-1], rtol=1e-5, atol=1e-6)
    fitted = x1 @ solution
    yy = y.reshape(-1, 5).double()
    expected = float(((yy - fitted) ** 2).sum() / ((yy - yy.mean(0)) ** 2).sum())
    assert residual == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("held_out, cap", [(False, None), (True, 2), (False, 4)])
def test_matches_naive_replacement_through_hf_forward(held_out, cap, tiny_hf_model, hf_reference, token_ids):
    model = tiny_hf_model("llama")
    ids = token_ids(6, 8)
    config = UsefulnessConfig(threshold=1.05, held_out_fit=held_out, eval_max_sequences=cap)
    result = usefulness_scores(EvalSet(HFLayerStack(model), ids, 4), config)
    fit_ids = ids[:3] if held_out else ids
    eval_ids = ids[3:5] if held_out else ids[: cap or 6]
    assert (result.fit_sequences, result.eval_sequences) == (len(fit_ids), len(eval_ids))
    baseline = hf_reference.loss(model, eval_ids)
    assert result.baseline_loss == pytest.approx(baseline, rel=1e-5)
    states = hf_reference.states(model, fit_ids)
    layers = list(model.model.layers)
    for entry in result.layers:
        l = entry.layer
        x = torch.cat([states[l].reshape(-1, 16), torch.ones(fit_ids.numel(), 1)], 1).double()
        p = torch.linalg.lstsq(x, states[l + 1].reshape(-1, 16).double()).solution.float()
        linear = torch.nn.Linear(16, 16)
        with torch.no_grad():  # nn.Linear computes h W^T + b, so the weight is the transposed fit
            linear.weight.copy_(p[:-1].T)
            linear.bias.copy_(p[-1])
        restore = hf_reference.with_layers(
            model, layers[:l] + [hf_reference.function(linear)] + layers[l + 1 :]
        )
        try:
            loss = hf_reference.loss(model, eval_ids)
        finally:
            restore()
        assert entry.loss == pytest.approx(loss, rel=1e-5)
        assert entry.loss_ratio == pytest.approx(loss / baseline, rel=1e-5)
        assert entry.useful == (loss / baseline > 1.05)
    assert result.score == pytest.approx(sum(e.useful for e in result.layers) / 3)


def test_held_out_fit_needs_two_sequences(toy_stack, token_ids):
    stack = toy_stack([lambda h: h], hidden=4)
    with pytest.raises(ValueError, match="at least 2"):
        usefulness_scores(EvalSet(stack, token_ids(1, 4), 1), UsefulnessConfig(held_out_fit=True))


def test_streaming_fit_is_stable_on_an_ill_conditioned_case():
    """An offset and two nearly collinear inputs (cond [x, 1] ~ 3e10): normal equations square that."""
    gen = torch.Generator().manual_seed(0)
    d = 6
    mix = torch.eye(d, dtype=torch.float64)
    mix[1] = mix[0] + 1e-4 * mix[1]
    x = (1e3 + torch.randn(4, 50, d, generator=gen, dtype=torch.float64) @ mix).float()
    y = x.double() @ torch.randn(d, d, generator=gen, dtype=torch.float64)
    y = (y + 0.01 * torch.randn(4, 50, d, generator=gen, dtype=torch.float64)).float()
    x1 = torch.cat([x.reshape(-1, d).double(), torch.ones(200, 1, dtype=torch.float64)], 1)
    assert torch.linalg.cond(x1) > 1e10
    reference = torch.linalg.lstsq(x1, y.reshape(-1, d).double(), driver="gelsd").solution
    system = StreamingLeastSquares(d)
    for i in range(4):
        system.add(x[i : i + 1], y[i : i + 1])
    affine, residual = system.solve()
    error = (affine.weight.double() - reference[:-1]).abs().max() / reference[:-1].abs().max()
    assert error < 1e-5
    fitted = x1 @ reference
    yy = y.reshape(-1, d).double()
    expected = float(((yy - fitted) ** 2).sum() / ((yy - yy.mean(0)) ** 2).sum())
    assert residual == pytest.approx(expected, rel=1e-4)
