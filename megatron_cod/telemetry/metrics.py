"""Depth metrics: tensors in, numbers out.

The one definition of every per-layer statistic. Training telemetry and the offline analysis
suite both call these functions, so a number means the same thing in both places.

Conventions: hidden states are ``[..., d]`` (any leading token dims, e.g. ``[s, b, d]`` from
megatron or ``[b, s, d]`` from HF). Per-token functions return a tensor over the leading dims;
reductions over tokens are left to the caller so that micro-batches and data-parallel ranks can be
combined token-weighted (sum of per-token values, plus a token count). All math runs in fp32
whatever the input dtype, because bf16 variance of a large residual stream keeps ~3 digits.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-12


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


def per_token_variance(h: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance across the hidden dimension for each token (divisor d-1 when unbiased, as the paper)."""
    return torch.var(_f32(h), dim=-1, unbiased=unbiased)


def per_token_rms(h: torch.Tensor) -> torch.Tensor:
    """Root mean square across the hidden dimension for each token."""
    return _f32(h).pow(2).mean(dim=-1).sqrt()


def per_token_norm(h: torch.Tensor) -> torch.Tensor:
    """L2 norm across the hidden dimension for each token."""
    return torch.linalg.vector_norm(_f32(h), dim=-1)


def per_token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of a and b for each token; 1 where both vectors are equal."""
    a, b = _f32(a), _f32(b)
    num = (a * b).sum(dim=-1)
    den = per_token_norm(a) * per_token_norm(b)
    return num / den.clamp_min(_EPS)


def per_token_update_norm(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """||h_{l+1} - h_l|| for each token: the size of the layer's residual update f_l."""
    return per_token_norm(_f32(h_out) - _f32(h_in))


def per_token_relative_update(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """||f_l|| / ||h_l|| for each token (Csordas et al. 2025)."""
    return per_token_update_norm(h_in, h_out) / per_token_norm(h_in).clamp_min(_EPS)


def per_token_angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / pi for each token (Gromov et al. 2024), in [0, 1]."""
    return torch.arccos(per_token_cosine(a, b).clamp(-1.0, 1.0)) / math.pi


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT Block Influence: 1 - mean over tokens of cos(h_l, h_{l+1}) (0-dim tensor)."""
    return 1.0 - per_token_cosine(h_in, h_out).mean()


def residual_variance(h: torch.Tensor) -> torch.Tensor:
    """The paper's residual variance: mean over tokens of the per-token variance (0-dim tensor)."""
    return per_token_variance(h).mean()
