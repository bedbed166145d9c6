"""Hutchinson-style estimates of a d x d matrix's distance from the identity, from probe products.

Input: Rademacher probes u_k (rows of U, K x d) and two products w1_k, w2_k that each equal
u_k^T A up to independent zero-mean noise, where A = J - I (for an exactly computed product pass
the same tensor twice). Then, with E[u u^T] = I:
  E[w1_k . w2_k]            = ||A||_F^2
  E[u_k . w_k]              = tr A
  E[u_k * w_k] (elementwise) = diag A
and products of two *different* probes' diagonal estimates are unbiased for squares of sums
(U-statistics), which gives the spread of the diagonal without the probe-noise inflation.
Standard errors come from the leave-one-probe-out jackknife, so every derived number (square
roots, differences) gets one the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    """A value and its standard error (0.0 when computed exactly)."""

    value: float
    stderr: float = 0.0


@dataclass(frozen=True)
class IdentityDistance:
    """Scores of a Jacobian J (d x d) against the identity, as in the paper's compute_jacobian.py."""

    jacobian_norm: Estimate  # ||J - I||_F / d
    off_diagonal_norm: Estimate  # ||J * (1 - I)||_F / sqrt(d^2 - d)
    diagonal_mean: Estimate
    diagonal_std: Estimate  # unbiased (divisor d - 1) over the d diagonal entries
    frobenius_norm: Estimate  # ||J||_F
    spectral_norm: float | None  # largest singular value; only from an exact J
    diagonal: list[float]
    diagonal_stderr: list[float]


def exact_identity_distance(jacobian: torch.Tensor) -> IdentityDistance:
    """All scores from an explicit Jacobian."""
    j = jacobian.double()
    d = j.shape[0]
    eye = torch.eye(d, dtype=j.dtype, device=j.device)
    diag = torch.diagonal(j)
    off = j * (1 - eye)
    return IdentityDistance(
        jacobian_norm=Estimate(float(torch.linalg.matrix_norm(j - eye)) / d),
        off_diagonal_norm=Estimate(float(torch.linalg.matrix_norm(off)) / math.sqrt(d * d - d)),
        diagonal_mean=Estimate(float(diag.mean())),
        diagonal_std=Estimate(float(diag.std())),
        frobenius_norm=Estimate(float(torch.linalg.matrix_norm(j))),
        spectral_norm=float(torch.linalg.matrix_norm(j, ord=2)),
        diagonal=diag.tolist(),
        diagonal_stderr=[0.0] * d,
    )


def _u_stat_square(x: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of ||E x||^2 from K i.i.d. rows x_k: sum over k != m of x_k . x_m / K(K-1)."""
    k = x.shape[0]
    total = x.sum(dim=0)
    return ((total * total).sum() - (x * x).sum()) / (k * (k - 1))


def _scalar_estimates(q: torch.Tensor, tau: torch.Tensor, diag_terms: torch.Tensor) -> torch.Tensor:
    """[||J-I||_F/d, offdiag/sqrt(d^2-d), diag mean, diag std, ||J||_F] from per-probe terms."""
    d = diag_terms.shape[1]
    fro2 = q.mean()
    trace = tau.mean()
    diag_sq = _u_stat_square(diag_terms)  # sum_j A_jj^2
    trace_sq = _u_stat_square(tau.unsqueeze(1))  # (tr A)^2
    diag_var = (diag_sq - trace_sq / d) / (d - 1)
    return torch.stack(
        [
            fro2.clamp_min(0).sqrt() / d,
            (fro2 - diag_sq).clamp_min(0).sqrt() / math.sqrt(d * d - d),
            1 + trace / d,
            diag_var.clamp_min(0).sqrt(),
            (d + 2 * trace + fro2).clamp_min(0).sqrt(),
        ]
    )


def jackknife(
    stat: Callable[[torch.Tensor], torch.Tensor], num_probes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``stat(index)`` evaluated on all probes, and its leave-one-out jackknife standard error."""
    every = torch.arange(num_probes, device="cpu")  # indices, which index a tensor on any device
    full = stat(every)
    loo = torch.stack([stat(torch.cat([every[:k], every[k + 1 :]])) for k in range(num_probes)])
    spread = ((loo - loo.mean(dim=0)) ** 2).sum(dim=0) * (num_probes - 1) / num_probes
    return full, spread.sqrt()


def randomized_identity_distance(
    probes: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
) -> IdentityDistance:
    """Estimates from probes U (K x d) and two noisy products w1, w2 ~ U A (K x d), A = J - I."""
    u, w1, w2 = probes.double(), w1.double(), w2.double()
    k = u.shape[0]
    if k < 3:
        raise ValueError("randomized estimates need at least 3 probes")
    w = (w1 + w2) / 2
    q = (w1 * w2).sum(dim=1)
    tau = (u * w).sum(dim=1)
    diag_terms = u * w
    values, errors = jackknife(lambda idx: _scalar_estimates(q[idx], tau[idx], diag_terms[idx]), k)
    diagonal = 1 + diag_terms.mean(dim=0)
    diagonal_se = diag_terms.std(dim=0) / math.sqrt(k)
    est = [Estimate(float(v), float(e)) for v, e in zip(values, errors)]
    return IdentityDistance(
        jacobian_norm=est[0],
        off_diagonal_norm=est[1],
        diagonal_mean=est[2],
        diagonal_std=est[3],
        frobenius_norm=est[4],
        spectral_norm=None,
        diagonal=diagonal.tolist(),
        diagonal_stderr=diagonal_se.tolist(),
    )
