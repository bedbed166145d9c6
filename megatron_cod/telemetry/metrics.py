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


def as_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, without a copy when it already is."""
    return x.float() if x.dtype != torch.float32 else x


def variance_from_norm_and_sum(
    norm: torch.Tensor, total: torch.Tensor, d: int, unbiased: bool = True
) -> torch.Tensor:
    """Per-token variance from ||h|| and sum(h) over the d hidden entries: (||h||^2 - (sum h)^2 / d)
    / (d - 1), or / d when not unbiased.

    One pass over h where the centred form takes two plus a copy: on activations the model has just
    written, each pass costs more than the arithmetic (telemetry reads every layer's output and
    branches). Its rounding is relative to ||h||^2, i.e. 1 / sin^2 of the angle between h and the
    all-ones direction times the fp32 rounding of the two-pass form: the same unless a token's
    hidden state is almost constant across the hidden dimension.
    """
    sum_sq = norm.square()
    centred_sq = torch.addcmul(sum_sq, total, total, value=-1.0 / d).clamp_min(0.0)
    return centred_sq / (d - (1 if unbiased else 0))


def per_token_variance(h: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance across the hidden dimension for each token (divisor d-1 when unbiased, as the paper)."""
    h = as_fp32(h)
    return variance_from_norm_and_sum(
        torch.linalg.vector_norm(h, dim=-1), h.sum(dim=-1), h.shape[-1], unbiased
    )


def per_token_rms(h: torch.Tensor) -> torch.Tensor:
    """Root mean square across the hidden dimension for each token."""
    return as_fp32(h).pow(2).mean(dim=-1).sqrt()


def per_token_norm(h: torch.Tensor) -> torch.Tensor:
    """L2 norm across the hidden dimension for each token."""
    return torch.linalg.vector_norm(as_fp32(h), dim=-1)


def per_token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of a and b for each token; 1 where both vectors are equal."""
    a, b = as_fp32(a), as_fp32(b)
    num = (a * b).sum(dim=-1)
    den = per_token_norm(a) * per_token_norm(b)
    return num / den.clamp_min(_EPS)


def per_token_update_norm(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """||h_{l+1} - h_l|| for each token: the size of the layer's residual update f_l."""
    return per_token_norm(as_fp32(h_out) - as_fp32(h_in))


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


def layer_output_reductions(
    h_in: torch.Tensor, h_out: torch.Tensor, in_norm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: ||h_in||, ||h_out||, sum(h_out), ||h_out - h_in||: the only passes over the
    activations that layer_output_terms needs (their stack is its reductions). ``in_norm``: ||h_in||
    when already known (the previous layer's ||h_out||: telemetry passes it on)."""
    x, y = as_fp32(h_in), as_fp32(h_out)
    return (
        torch.linalg.vector_norm(x, dim=-1) if in_norm is None else in_norm,
        torch.linalg.vector_norm(y, dim=-1),
        y.sum(dim=-1),
        torch.linalg.vector_norm(y - x, dim=-1),
    )


def layer_terms_from_reductions(reductions: torch.Tensor, d: int) -> torch.Tensor:
    """layer_output_terms from layer_output_reductions: ``[..., 4, tokens]`` in, ``[..., 5, tokens]``
    out (order and numerics as layer_output_terms). Leading dims let telemetry stack many layers'
    reductions and compute their terms in one set of small ops."""
    x_norm, y_norm, y_sum, update = reductions.unbind(-2)
    two_dot = x_norm.square() + y_norm.square() - update.square()
    return torch.stack(
        [
            variance_from_norm_and_sum(y_norm, y_sum, d),
            y_norm / math.sqrt(d),
            update,
            update / x_norm.clamp_min(_EPS),
            two_dot / (2 * x_norm * y_norm).clamp_min(_EPS),
        ],
        dim=-2,
    )


def layer_output_terms(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """Per token, stacked on a new first dim: variance and RMS of h_out, update norm, relative
    update, cosine of h_in and h_out.

    The same numbers as per_token_variance, per_token_rms, per_token_update_norm,
    per_token_relative_update and per_token_cosine, from four reductions (||h_in||, ||h_out||,
    sum(h_out), ||h_out - h_in||) and no other pass over the activations: telemetry evaluates it
    on every layer of every collection step. The dot product comes from the polarisation identity
    2 <x, y> = ||x||^2 + ||y||^2 - ||y - x||^2, whose rounding (fp32, relative to ||x||^2 + ||y||^2)
    is that of a direct fp32 dot product; the update itself is taken from y - x, never from the
    identity, so small updates keep their relative precision.
    """
    reductions = torch.stack(layer_output_reductions(h_in, h_out)).flatten(1)
    return layer_terms_from_reductions(reductions, h_out.shape[-1]).reshape(5, *h_out.shape[:-1])


def branch_output_reductions(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: ||a|| and sum(a) of a sub-layer branch output (one pass for each; their stack is
    the reductions of branch_terms_from_reductions)."""
    a = as_fp32(a)
    return torch.linalg.vector_norm(a, dim=-1), a.sum(dim=-1)


def branch_terms_from_reductions(reductions: torch.Tensor, d: int) -> torch.Tensor:
    """branch_output_terms from branch_output_reductions (first dim of 2, or on dim -2 of a stack)."""
    norm, total = reductions.unbind(-2)
    return torch.stack([variance_from_norm_and_sum(norm, total, d), norm], dim=-2)


def branch_output_terms(a: torch.Tensor) -> torch.Tensor:
    """Per token, stacked: variance and L2 norm of a sub-layer branch output (one pass for each)."""
    reductions = torch.stack(branch_output_reductions(a)).flatten(1)
    return branch_terms_from_reductions(reductions, a.shape[-1]).reshape(2, *a.shape[:-1])


# --- attention -----------------------------------------------------------------------------------
# Causal convention used throughout: ``probs`` is ``[heads, q, k]`` and its q rows are the LAST q
# positions of a k-long causal context, so row r sees n_r = k - q + r + 1 keys (a full square
# matrix is the case q == k, where row 0 sees only key 0).


def causal_visible_keys(num_queries: int, num_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """n_r, the number of keys row r of a causal ``[q, k]`` attention block can see."""
    if not 1 <= num_queries <= num_keys:
        raise ValueError(f"need 1 <= num_queries <= num_keys, got {num_queries}, {num_keys}")
    return torch.arange(num_keys - num_queries + 1, num_keys + 1, device=device)


def attention_valid_rows(num_queries: int, num_keys: int, min_keys: int) -> int:
    """How many rows of a causal block see more than min_keys keys: always the last rows."""
    first = num_keys - num_queries + 1
    return max(0, num_keys - max(first, min_keys + 1) + 1)


def causal_attention_probs(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax(q k^T * scale) in fp32, ``[heads, q, k]``.

    query ``[q, heads, d]`` holds the last q positions, key ``[k, groups, d]`` all k positions;
    with grouped-query attention each key group serves heads/groups consecutive query heads
    (megatron's repeat_interleave layout).
    """
    q, k = as_fp32(query), as_fp32(key)
    heads, groups = q.shape[1], k.shape[1]
    if heads % groups:
        raise ValueError(f"{heads} query heads are not a multiple of {groups} key groups")
    k = k.repeat_interleave(heads // groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    visible = causal_visible_keys(q.shape[0], k.shape[0], scores.device)
    masked = torch.arange(k.shape[0], device=scores.device)[None, :] >= visible[:, None]
    return torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1)


def attention_normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per head: mean over query rows of H_r / log(n_r), H_r = -sum_j a_rj log a_rj.

    1 means uniform attention over the visible keys, 0 attention to a single key. Rows that see a
    single key (n_r = 1, row 0 of a square block) have no choice to measure and 0/0 there, so they
    are left out of the mean; a head with no row left gives NaN.
    """
    p = as_fp32(probs)
    rows = attention_valid_rows(p.shape[-2], p.shape[-1], 1)
    p = p[..., p.shape[-2] - rows :, :]
    visible = causal_visible_keys(p.shape[-2], p.shape[-1], p.device) if rows else p.new_ones(0)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return (entropy / torch.log(visible.to(p.dtype))).mean(dim=-1)


def attention_topk_mass(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Per head: mean over query rows of the attention mass on the row's k largest weights.

    Rows that see at most k keys hold all their mass in the top k by construction, so they are
    left out like the single-key rows of attention_normalized_entropy; NaN if no row is left.
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    p = as_fp32(probs)
    rows = attention_valid_rows(p.shape[-2], p.shape[-1], k)
    p = p[..., p.shape[-2] - rows :, :]
    return p.topk(min(k, p.shape[-1]), dim=-1).values.sum(dim=-1).mean(dim=-1)


# --- weights -------------------------------------------------------------------------------------


def weight_rms(w: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries of a weight matrix (0-dim)."""
    return as_fp32(w).pow(2).mean().sqrt()


def count_small_weights(w: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Number of entries with |w| < threshold (0-dim, fp32), for sharded matrices."""
    return (as_fp32(w).abs() < threshold).sum().float()


def abs_sums_and_small_counts(
    weights: list[torch.Tensor], thresholds: torch.Tensor, chunk: int = 2**22
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tensor: sum of |w| and count_small_weights(w, thresholds[i]), both fp64 ``[n]``.

    One pass over the weights for both, through one reused fp32 |w| buffer and one bool buffer of at
    most ``chunk`` entries, instead of an L1 norm pass plus a fresh |w| and mask per matrix; the
    training telemetry runs it over every matrix of the model.
    """
    if not weights:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    device = weights[0].device
    size = min(chunk, max(w.numel() for w in weights))
    magnitude = torch.empty(size, dtype=torch.float32, device=device)
    small = torch.empty(size, dtype=torch.bool, device=device)
    l1, counts = [], []
    for w, threshold in zip(weights, thresholds.float().unbind()):
        for part in w.detach().reshape(-1).split(size):
            buf = magnitude[: part.numel()]
            # abs(out=) needs the input's dtype; |w| of a bf16/fp16 entry is exact in fp32 either way
            a = torch.abs(part, out=buf) if part.dtype == torch.float32 else buf.copy_(part).abs_()
            l1.append(a.sum(dtype=torch.float64))
            counts.append(torch.count_nonzero(torch.lt(a, threshold, out=small[: part.numel()])))
    parts = torch.tensor([-(-w.numel() // size) for w in weights], device=device)
    owner = torch.repeat_interleave(torch.arange(len(weights), device=device), parts)
    l1_sum = torch.zeros(len(weights), dtype=torch.float64, device=device)
    count_sum = torch.zeros(len(weights), dtype=torch.float64, device=device)
    l1_sum.index_add_(0, owner, torch.stack(l1))
    count_sum.index_add_(0, owner, torch.stack(counts).double())
    return l1_sum, count_sum


def weight_sparsity(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Fraction of entries with |w| < eps * RMS(W) (0-dim)."""
    return count_small_weights(w, eps * weight_rms(w)) / w.numel()


def hoyer_from_norms(l1: torch.Tensor, l2: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity (sqrt(n) - ||w||_1/||w||_2) / (sqrt(n) - 1) from the norms of n entries.

    0 for a vector of equal magnitudes, 1 for a single non-zero entry; split out so sharded
    matrices can sum l1, l2^2 and n across ranks first. Computed in fp64.
    """
    l1 = torch.as_tensor(l1).double()
    l2 = torch.as_tensor(l2, device=l1.device).double()
    root_n = torch.as_tensor(n, device=l1.device).double().sqrt()
    return (root_n - l1 / l2) / (root_n - 1.0)


def hoyer_sparsity(w: torch.Tensor) -> torch.Tensor:
    """Hoyer measure of all entries of w (0-dim, fp64); needs at least 2 entries."""
    if w.numel() < 2:
        raise ValueError("the Hoyer measure needs at least 2 entries")
    x = as_fp32(w).flatten()
    return hoyer_from_norms(x.abs().sum(), torch.linalg.vector_norm(x), x.numel())


# --- MoE routing ---------------------------------------------------------------------------------


def tokens_per_expert(routing_map: torch.Tensor) -> torch.Tensor:
    """Token slots routed to each expert from a ``[tokens, experts]`` boolean routing map."""
    return routing_map.reshape(-1, routing_map.shape[-1]).sum(dim=0)


def load_imbalance(tokens: torch.Tensor) -> torch.Tensor:
    """max / mean of tokens per expert (1 = perfectly balanced, num_experts = all on one), over the
    last dim: ``[..., experts]`` in, ``[...]`` out."""
    t = tokens.double()
    return t.amax(dim=-1) / t.mean(dim=-1).clamp_min(_EPS)


def dead_experts(tokens: torch.Tensor) -> torch.Tensor:
    """Number of experts that received no token, over the last dim: ``[..., experts]`` in, ``[...]`` out."""
    return (tokens == 0).sum(dim=-1)


def per_token_router_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy (nats) of the full softmax over experts (dimension ``dim``) for each token; at most
    log(num_experts).

    As log s - t / s with y = z - max(z), e = exp(y), s = sum e, t = sum e y: two positive terms
    (t <= 0), so nothing cancels, and no overflow whatever the logits. On the CPU this takes half
    the time of entr(softmax(z)): torch's softmax over a last dim of a few experts is slow, and
    so is any reduction over it; experts on an outer dim (``dim=-2``) reduce several times faster.
    """
    y = as_fp32(logits)
    y = y - y.amax(dim=dim, keepdim=True)
    e = y.exp()
    s, t = e.sum(dim=dim), (e * y).sum(dim=dim)
    return s.log() - t / s


def router_entropy_terms(logits: torch.Tensor, experts: int) -> torch.Tensor:
    """per_token_router_entropy of many routers' logits stacked as per-token terms are, each router's
    ``[experts, tokens]`` (transposed) logits flattened: ``[..., 1, experts * tokens]`` in,
    ``[..., 1, tokens]`` out."""
    return per_token_router_entropy(logits.unflatten(-1, (experts, -1)), dim=-2)


def router_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the router's softmax entropy (0-dim)."""
    return per_token_router_entropy(logits).mean()
