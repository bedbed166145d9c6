"""The probe estimators in closed-form situations where the answer is exact or known in expectation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from megatron_cod.analysis.probe_estimators import (
    exact_identity_distance,
    jackknife,
    randomized_identity_distance,
)


def all_sign_vectors(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=torch.float64)


def test_diagonal_matrix_is_estimated_exactly_by_any_probes():
    a = torch.diag(torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64))
    probes = torch.randint(0, 2, (5, 4), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    w = probes @ a
    est = randomized_identity_distance(probes, w, w)
    ref = exact_identity_distance(torch.eye(4, dtype=torch.float64) + a)
    for name in ("jacobian_norm", "off_diagonal_norm", "diagonal_mean", "diagonal_std", "frobenius_norm"):
        assert getattr(est, name).value == pytest.approx(getattr(ref, name).value, abs=1e-12)
        assert getattr(est, name).stderr == pytest.approx(0.0, abs=1e-12)
    assert est.diagonal == pytest.approx(ref.diagonal, abs=1e-12)
    assert est.spectral_norm is None


def test_frobenius_and_trace_are_exact_over_all_sign_vectors():
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    probes = all_sign_vectors(5)
    est = randomized_identity_distance(probes, probes @ a, probes @ a)
    assert est.jacobian_norm.value == pytest.approx(float(torch.linalg.matrix_norm(a)) / 5, rel=1e-12)
    assert est.diagonal_mean.value == pytest.approx(1 + float(torch.trace(a)) / 5, rel=1e-12)
    assert est.diagonal == pytest.approx((1 + torch.diagonal(a)).tolist(), rel=1e-12)


def test_independent_noise_on_the_two_products_cancels_in_expectation():
    # w1, w2 = u A + independent zero-mean noise: E[w1 . w2] is still ||u A||^2.
    gen = torch.Generator().manual_seed(2)
    a = 0.3 * torch.randn(6, 6, generator=gen, dtype=torch.float64)
    probes = all_sign_vectors(6)
    noise = torch.randn(2, *probes.shape, generator=gen, dtype=torch.float64)
    noise = torch.cat([noise, -noise], dim=1)  # antithetic copies make the noise sum exactly zero
    probes2 = torch.cat([probes, probes])
    est = randomized_identity_distance(probes2, probes2 @ a + noise[0], probes2 @ a + noise[1])
    cross_noise = float((noise[0] * noise[1]).sum(dim=1).mean())
    expected = math.sqrt(float((a**2).sum()) + cross_noise) / 6
    assert est.jacobian_norm.value == pytest.approx(expected, rel=1e-12)


def test_jackknife_of_a_mean_is_the_standard_error():
    x = torch.tensor([1.0, 4.0, 2.0, 8.0, 5.0], dtype=torch.float64)
    value, se = jackknife(lambda idx: x[idx].mean(), 5)
    assert float(value) == pytest.approx(4.0)
    assert float(se) == pytest.approx(float(x.std() / math.sqrt(5)), rel=1e-12)
