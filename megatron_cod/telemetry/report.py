"""Host side: turn the reduced telemetry buffers into named values (see naming for the keys).

Means are sum / count; a statistic whose count is zero was not collected and gets no key.
Derived values: Block Influence = 1 - mean cosine; grad and param norms are square roots of the
summed squares; tokens per expert are per-step totals over micro-batches and ranks, and the
imbalance (max/mean) and dead-expert count are taken from those totals.
"""

from __future__ import annotations

import math

import torch

from megatron_cod.telemetry import metrics as M
from megatron_cod.telemetry import naming
from megatron_cod.telemetry.accumulator import (
    ACTIVATION_STATS,
    ATTN_ENTROPY_ROWS,
    ATTN_ENTROPY_SUM,
    ATTN_TOPK_ROWS,
    ATTN_TOPK_SUM,
    AUX_LOSSES,
    ROUTER_ENTROPY_STAT,
    W_COUNT,
    W_SUMSQ,
    TelemetryBuffers,
)
from megatron_cod.telemetry.params import WEIGHT_FAMILIES


def format_values(
    host: TelemetryBuffers, activations: bool, norms: bool, attention: bool, weights: bool
) -> dict[str, float]:
    """Named values of the families collected this step, from a host copy of the buffers."""
    L = host.shape.num_layers
    out: dict[str, float] = {}
    if activations:
        _activations(host, L, out)
    if norms:
        for row, (grad_sq, param_sq) in enumerate(host.norm_sq.tolist()):
            out[naming.depth_key("grad_norm", row + 1, L)] = math.sqrt(grad_sq)
            out[naming.depth_key("param_norm", row + 1, L)] = math.sqrt(param_sq)
    if attention:
        _attention(host, L, out)
    if weights:
        _weights(host, L, out)
    return out


def _activations(host: TelemetryBuffers, L: int, out: dict[str, float]) -> None:
    E = host.shape.num_experts
    act_sum, act_count = host.act_sum.tolist(), host.act_count.tolist()
    aux_sum, aux_count = host.aux_sum.tolist(), host.aux_count.tolist()
    tokens = host.expert_tokens.tolist()
    imbalance = M.load_imbalance(host.expert_tokens).tolist() if E else []
    dead = M.dead_experts(host.expert_tokens).tolist() if E else []
    for row in range(L):
        n = row + 1
        for i, stat in enumerate(ACTIVATION_STATS):
            if act_count[row][i] <= 0:
                continue
            value = act_sum[row][i] / act_count[row][i]
            if stat == "router_entropy":
                out[naming.moe_key(stat, n, L)] = value
                continue
            out[naming.depth_key(stat, n, L)] = value
            if stat == "cosine":
                out[naming.depth_key("block_influence", n, L)] = 1.0 - value
        for i, name in enumerate(AUX_LOSSES):
            if aux_count[row][i] > 0:
                out[naming.moe_key(name, n, L)] = aux_sum[row][i] / aux_count[row][i]
        if E and act_count[row][ROUTER_ENTROPY_STAT] > 0:
            for e, t in enumerate(tokens[row]):
                out[naming.expert_key("tokens", n, L, e, E)] = t
            out[naming.moe_key("imbalance", n, L)] = imbalance[row]
            out[naming.moe_key("dead_experts", n, L)] = float(dead[row])


def _attention(host: TelemetryBuffers, L: int, out: dict[str, float]) -> None:
    H = host.shape.num_heads
    cells = host.attention.tolist()
    for row in range(L):
        for stat, total, rows in (
            ("entropy", ATTN_ENTROPY_SUM, ATTN_ENTROPY_ROWS),
            ("topk_mass", ATTN_TOPK_SUM, ATTN_TOPK_ROWS),
        ):
            per_head = {h: c[total] / c[rows] for h, c in enumerate(cells[row]) if c[rows] > 0}
            for h, value in per_head.items():
                out[naming.attention_key(stat, row + 1, L, h, H)] = value
            if per_head:
                out[naming.attention_key(stat, row + 1, L)] = sum(per_head.values()) / len(per_head)


def _weights(host: TelemetryBuffers, L: int, out: dict[str, float]) -> None:
    sums, small, l1s = host.weight_sums.tolist(), host.weight_small.tolist(), host.weight_l1.tolist()
    for row in range(L):
        for f, family in enumerate(WEIGHT_FAMILIES):
            count, sumsq, l1 = sums[row][f][W_COUNT], sums[row][f][W_SUMSQ], l1s[row][f]
            if count <= 0:
                continue
            out[naming.weight_key("sparsity", row + 1, L, family)] = small[row][f] / count
            if count >= 2 and sumsq > 0:
                out[naming.weight_key("hoyer", row + 1, L, family)] = M.hoyer_from_norms(
                    torch.tensor(l1), torch.tensor(math.sqrt(sumsq)), count
                ).item()
