"""The device-side accumulator: every telemetry sum of one step in a single flat fp64 tensor.

Hooks hand over small device tensors of sums (PendingSums) and host-known counts (token and row
numbers are shapes, never device values), so collecting never waits for the device and costs no
extra kernels per hook; the pending sums enter the flat tensor with one index_add at the end of
the step. The flat tensor then crosses the ranks with one SUM all-reduce (plus one for the weight
sums on weight steps, which must be global before the small-weight threshold can be applied) and
reaches the host with one copy. Means are sum / count with counts reduced the
same way, so micro-batches and data-parallel ranks are combined token-weighted, pipeline stages
fill disjoint layer rows, and ranks holding identical activations (tensor-parallel replicas)
leave every mean unchanged.

fp64 keeps token counts exact far past 2^24 and makes sums of per-token values over a whole
global batch lossless enough; the buffer is a few KB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Token-weighted per-layer statistics: each column has its own count column, since the sources
# differ (layer output, attention branch, MLP branch, final norm, router).
ACTIVATION_STATS = (
    "var",
    "rms",
    "update_norm",
    "rel_update",
    "cosine",
    "attn_var",
    "attn_norm",
    "mlp_var",
    "mlp_norm",
    "var_final_norm",
    "router_entropy",
)
LAYER_STATS = slice(0, 5)
ATTN_BRANCH_STATS = slice(5, 7)
MLP_BRANCH_STATS = slice(7, 9)
FINAL_NORM_STAT = 9
ROUTER_ENTROPY_STAT = 10

# megatron-core's per-layer MoE loss tracker names (moe_utils.save_to_aux_losses_tracker).
AUX_LOSSES = ("load_balancing_loss", "seq_load_balancing_loss", "global_load_balancing_loss", "z_loss")

# Attention sample, per layer and head: normalised-entropy sum and row count, top-k sum and count.
ATTN_ENTROPY_SUM, ATTN_ENTROPY_ROWS, ATTN_TOPK_SUM, ATTN_TOPK_ROWS = range(4)

# Weights, per layer and matrix family: element count and sum of squares (reduced first, for the
# global RMS); the sum of |w| and the small-entry count come after, from the same pass.
W_COUNT, W_SUMSQ = range(2)


@dataclass(frozen=True)
class BufferShape:
    num_layers: int
    num_heads: int
    num_experts: int
    num_weight_families: int


class TelemetryBuffers:
    """Named views into one flat fp64 tensor; the weight sums come first so they can be reduced
    on their own before the small-weight counts are taken."""

    # views into ``flat``, set in __init__ from the layout
    weight_sums: torch.Tensor
    act_sum: torch.Tensor
    act_count: torch.Tensor
    aux_sum: torch.Tensor
    aux_count: torch.Tensor
    expert_tokens: torch.Tensor
    norm_sq: torch.Tensor
    attention: torch.Tensor
    weight_l1: torch.Tensor
    weight_small: torch.Tensor

    def __init__(
        self, shape: BufferShape, device: torch.device | str, flat: torch.Tensor | None = None
    ) -> None:
        L, H, E, F = shape.num_layers, shape.num_heads, shape.num_experts, shape.num_weight_families
        layout = (
            ("weight_sums", (L, F, 2)),
            ("act_sum", (L, len(ACTIVATION_STATS))),
            ("act_count", (L, len(ACTIVATION_STATS))),
            ("aux_sum", (L, len(AUX_LOSSES))),
            ("aux_count", (L, len(AUX_LOSSES))),
            ("expert_tokens", (L, E)),
            ("norm_sq", (L, 2)),
            ("attention", (L, H, 4)),
            ("weight_l1", (L, F)),
            ("weight_small", (L, F)),
        )
        total = sum(_numel(s) for _, s in layout)
        self.shape = shape
        self.flat = torch.zeros(total, dtype=torch.float64, device=device) if flat is None else flat
        # positions are built on first use: the per-step host copy (to_host) never needs them
        self._spans: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._positions: dict[str, torch.Tensor] = {}
        offset = 0
        for name, s in layout:
            setattr(self, name, self.flat[offset : offset + _numel(s)].view(s))
            self._spans[name] = (offset, s)
            offset += _numel(s)
        self._weight_end = _numel(layout[0][1])

    def positions(self, name: str) -> torch.Tensor:
        """Host tensor shaped like view ``name`` holding each element's index in ``flat``."""
        if name not in self._positions:
            offset, shape = self._spans[name]
            self._positions[name] = torch.arange(offset, offset + _numel(shape)).view(shape)
        return self._positions[name]

    def zero_(self) -> None:
        self.flat.zero_()

    def all_reduce_weight_sums(self) -> None:
        _sum_over_world(self.flat[: self._weight_end])

    def all_reduce_rest(self) -> None:
        _sum_over_world(self.flat[self._weight_end :])

    def to_host(self) -> TelemetryBuffers:
        """A host copy with the same views: the step's one device-to-host transfer."""
        return TelemetryBuffers(self.shape, "cpu", flat=self.flat.cpu())


class PendingSums:
    """Sums produced during a step, added into TelemetryBuffers.flat once at its end.

    Values are device tensors (their flat positions are known on the host); counts are host
    numbers. Nothing here reads a device value.
    """

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []
        self._value_positions: list[int] = []
        self._counts: dict[int, float] = {}

    def add(self, positions: list[int], values: torch.Tensor) -> None:
        """values: 1-D float device tensor (fp64 sums, or fp32 values that fp32 holds exactly),
        one entry per position."""
        self._values.append(values)
        self._value_positions.extend(positions)

    def count(self, positions: list[int], amount: float) -> None:
        for p in positions:
            self._counts[p] = self._counts.get(p, 0.0) + amount

    def flush_into(self, buf: TelemetryBuffers) -> None:
        device = buf.flat.device
        if self._values:
            index = torch.tensor(self._value_positions, dtype=torch.long).to(device)
            # cat promotes a mix of fp32 and fp64 to fp64
            buf.flat.index_add_(0, index, torch.cat(self._values).to(torch.float64))
        if self._counts:
            index = torch.tensor(list(self._counts), dtype=torch.long).to(device)
            counts = torch.tensor(list(self._counts.values()), dtype=torch.float64).to(device)
            buf.flat.index_add_(0, index, counts)
        self.clear()

    def clear(self) -> None:
        self._values = []
        self._value_positions = []
        self._counts = {}


# per-token terms from stacked per-token values and the hidden (or expert) width
Terms = Callable[[torch.Tensor, int], torch.Tensor]


class TokenTerms:
    """Per-token values from the hooks (reductions of the activations, router logits), turned into
    per-token terms and summed over tokens for many hooks at once.

    In a hook every torch op costs its dispatch, which is most of a hook's time when the tensors are
    token-sized; held here, the terms (variance, ratios, cosine, router entropy) are a few ops per
    ``flush_every`` hooks (about one micro-batch) on the stacked values instead, and the
    hooks keep only the passes over activations that cannot wait. What is held is bounded: at most
    ``flush_every`` hooks' values and ``max_bytes``, never activations.
    """

    def __init__(self, pending: PendingSums, flush_every: int, max_bytes: int = 64 * 2**20) -> None:
        self._pending = pending
        self._flush_every = max(1, flush_every)
        self._max_bytes = max_bytes
        self._groups: dict[tuple[Terms, int, tuple[int, ...]], _Held] = {}
        self._held = 0
        self._bytes = 0

    def add(
        self,
        terms: Terms,
        d: int,
        parts: Sequence[torch.Tensor],
        positions: list[int],
    ) -> None:
        """k same-shaped ``parts``, whose values flattened and stacked as ``[n, k, m]`` for n hooks give
        ``terms(stacked, d)`` of ``[n, len(positions), tokens]``; their sums over tokens go to
        ``positions``. The parts are stacked at the flush, not here: one op less per hook."""
        key = (terms, d, (len(parts), *parts[0].shape))
        held = self._groups.get(key)
        if held is None:
            held = self._groups[key] = _Held([], [])
        held.parts.extend(parts)
        held.positions.extend(positions)
        self._held += 1
        self._bytes += len(parts) * parts[0].numel() * parts[0].element_size()
        if self._held >= self._flush_every or self._bytes >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        for (terms, d, (k, *_)), held in self._groups.items():
            stacked = torch.stack(held.parts).view(len(held.parts) // k, k, -1)
            values = terms(stacked, d).sum(dim=-1, dtype=torch.float64)
            self._pending.add(held.positions, values.flatten())
        self.clear()

    def clear(self) -> None:
        self._groups = {}
        self._held = 0
        self._bytes = 0


@dataclass
class _Held:
    parts: list[torch.Tensor]
    positions: list[int]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _sum_over_world(t: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and t.numel():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
