"""Which rank counts which parameter entries, so per-layer sums over the whole world are exact.

A parameter tensor on one rank is a shard of a logical matrix. Summed over all ranks, each logical
entry must be counted exactly once:
- tensor parallelism: split parameters (``tensor_model_parallel``) are counted on every TP rank,
  replicated ones (norm weights, the router) only on TP rank 0 (megatron's own rule,
  ``param_is_not_tensor_parallel_duplicate``);
- data parallelism: parameters and megatron-DDP ``main_grad`` are identical on every DP rank after
  the gradient all-reduce, so only DP rank 0 counts them; routed-expert parameters use the
  expert-data-parallel group and expert-TP rank instead, since expert parallelism splits experts
  over ranks that are data-parallel for the dense part;
- the distributed optimizer reduce-scatters gradients, so each DP rank holds the reduced gradient
  only for its shard of every bucket: each rank counts exactly that range of the grad buffer;
- pipeline stages own disjoint layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

# Weight matrices reported per layer; routed experts of a layer are pooled into one population.
WEIGHT_FAMILIES = (
    "linear_qkv",
    "linear_proj",
    "linear_fc1",
    "linear_fc2",
    "router",
    "experts.linear_fc1",
    "experts.linear_fc2",
    "shared_experts.linear_fc1",
    "shared_experts.linear_fc2",
)
_GROUPED_MLP_WEIGHTS = {"weight1": "linear_fc1", "weight2": "linear_fc2"}


def weight_family(name: str) -> str | None:
    """The WEIGHT_FAMILIES entry of a parameter name relative to its TransformerLayer, or None.

    Handles SequentialMLP (``mlp.experts.local_experts.3.linear_fc1.weight``), TEGroupedMLP
    (``mlp.experts.linear_fc1.weight3``) and GroupedMLP (``mlp.experts.weight1``).
    """
    parts = name.split(".")
    leaf = parts.pop()
    if leaf in _GROUPED_MLP_WEIGHTS and parts[-1:] == ["experts"]:
        parts.append(_GROUPED_MLP_WEIGHTS[leaf])
    elif not re.fullmatch(r"weight\d*", leaf):
        return None
    if parts and parts[0] in ("self_attention", "mlp"):
        parts = parts[1:]
    parts = [p for p in parts if p != "local_experts" and not p.isdigit()]
    family = ".".join(parts)
    return family if family in WEIGHT_FAMILIES else None


def is_routed_expert_param(name: str) -> bool:
    return ".experts." in f".{name}" and "shared_experts" not in name


@dataclass(frozen=True)
class ParallelRanks:
    tp: int = 0
    dp_cp: int = 0
    expert_tp: int = 0
    expert_dp: int = 0

    @classmethod
    def current(cls) -> ParallelRanks:
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            return cls()
        return cls(
            tp=ps.get_tensor_model_parallel_rank(),
            dp_cp=ps.get_data_parallel_rank(with_context_parallel=True),
            expert_tp=ps.get_expert_tensor_parallel_rank(),
            expert_dp=ps.get_expert_data_parallel_rank(),
        )


def not_tp_duplicate(param: torch.Tensor, routed_expert: bool, ranks: ParallelRanks) -> bool:
    if getattr(param, "tensor_model_parallel", False):
        return True
    return (ranks.expert_tp if routed_expert else ranks.tp) == 0


def counts_whole_tensor(param: torch.Tensor, routed_expert: bool, ranks: ParallelRanks) -> bool:
    """Whether this rank counts this (DP-replicated) tensor: DP rank 0 and not a TP duplicate."""
    dp_rank = ranks.expert_dp if routed_expert else ranks.dp_cp
    return dp_rank == 0 and not_tp_duplicate(param, routed_expert, ranks)


@dataclass(frozen=True)
class LayerParam:
    row: int  # 0-based global layer index
    name: str  # relative to the layer
    param: torch.nn.Parameter
    routed_expert: bool
    counted: bool  # counts_whole_tensor for this rank
    family: str | None  # weight family, None for norms and unlisted matrices


def layer_params(layers: Iterable[Any], ranks: ParallelRanks) -> list[LayerParam]:
    out = []
    for layer in layers:
        row = layer.layer_number - 1
        for name, p in layer.named_parameters():
            expert = is_routed_expert_param(name)
            family = weight_family(name) if p.dim() >= 2 else None
            out.append(LayerParam(row, name, p, expert, counts_whole_tensor(p, expert, ranks), family))
    return out


@dataclass(frozen=True)
class GradRange:
    """Entries [lo, hi) of a megatron-DDP grad buffer that this rank counts for layer row ``row``."""

    row: int
    buffer: torch.Tensor  # the buffer's flat grad_data
    lo: int
    hi: int


def ddp_grad_ranges(
    ddp_chunk: Any, wanted: dict[torch.nn.Parameter, LayerParam], ranks: ParallelRanks
) -> list[GradRange]:
    """The ranges of megatron DDP's grad buffers this rank counts for the ``wanted`` parameters.

    Plain DDP all-reduces gradients, so the whole ``main_grad`` of a counted parameter (a view of
    its buffer range) counts. The distributed optimizer reduce-scatters each bucket instead: DP
    rank r of the bucket's group ends up with the reduced gradient of the r-th equal slice of the
    bucket; the rest of its buffer holds local, unreduced gradients, which must not be counted, and
    every rank counts its slice of a parameter that is not a TP duplicate.
    """
    distributed = ddp_chunk.ddp_config.use_distributed_optimizer
    if distributed and ddp_chunk.ddp_config.num_distributed_optimizer_instances != 1:
        raise NotImplementedError("telemetry grad norms support one distributed-optimizer instance")
    ranges = []
    for buffer in list(ddp_chunk.buffers) + list(ddp_chunk.expert_parallel_buffers):
        size = buffer.data_parallel_group.size()
        rank = buffer.data_parallel_group.rank()
        for bucket in buffer.buckets:
            shard = bucket.grad_data.numel() // size
            own_lo, own_hi = (bucket.offset + rank * shard, bucket.offset + (rank + 1) * shard)
            for p in bucket.params_list:
                lp = wanted.get(p)
                if lp is None:
                    continue
                start, end, _ = buffer.param_index_map[p]
                if distributed:
                    if not not_tp_duplicate(p, lp.routed_expert, ranks):
                        continue
                    start, end = max(start, own_lo), min(end, own_hi)
                elif not lp.counted:
                    continue
                if start < end:
                    ranges.append(GradRange(lp.row, buffer.grad_data, start, end))
    return ranges


def merged_grad_views(ranges: Iterable[GradRange]) -> list[tuple[int, torch.Tensor]]:
    """(row, flat view) per run of adjacent ranges of one layer in one buffer: a layer's gradients
    are mostly one contiguous run, and one norm over it runs at memory speed where a norm per
    parameter pays a fixed cost per tensor (about half the time for 300 expert matrices)."""
    ordered = sorted(ranges, key=lambda r: (r.row, r.buffer.data_ptr(), r.lo))
    runs: list[list[Any]] = []
    for r in ordered:
        last = runs[-1] if runs else None
        if last is not None and last[0] == r.row and last[1] is r.buffer and last[3] == r.lo:
            last[3] = r.hi
        else:
            runs.append([r.row, r.buffer, r.lo, r.hi])
    return [(row, buffer[lo:hi]) for row, buffer, lo, hi in runs]
