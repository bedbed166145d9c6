"""Metric keys: one place that decides how telemetry numbers are named in MLflow, W&B and JSONL.

Layers are megatron's global 1-based ``layer_number`` (pipeline offset included), zero-padded to
2 digits, or 3 for models with 100 layers or more, so keys sort in depth order. Heads and experts
are 0-based tensor indices, padded the same way against their own counts.
"""

from __future__ import annotations

from functools import lru_cache

# Telemetry names every value of every collection step; a model has a few thousand distinct keys.
_cached = lru_cache(maxsize=2**16)


def _width(count: int) -> int:
    return 3 if count >= 100 else 2


@_cached
def layer_tag(layer_number: int, num_layers: int) -> str:
    """``layer_07`` for layer 7 of a model with fewer than 100 layers."""
    if not 1 <= layer_number <= num_layers:
        raise ValueError(f"layer_number {layer_number} outside 1..{num_layers}")
    return f"layer_{layer_number:0{_width(num_layers)}d}"


def index_tag(prefix: str, index: int, count: int) -> str:
    """``head_03`` / ``expert_03``: a 0-based index padded against count."""
    return f"{prefix}_{index:0{_width(count)}d}"


@_cached
def depth_key(stat: str, layer_number: int, num_layers: int) -> str:
    """``depth/var/layer_07``."""
    return f"depth/{stat}/{layer_tag(layer_number, num_layers)}"


@_cached
def moe_key(stat: str, layer_number: int, num_layers: int) -> str:
    """``moe/imbalance/layer_07``."""
    return f"moe/{stat}/{layer_tag(layer_number, num_layers)}"


@_cached
def expert_key(stat: str, layer_number: int, num_layers: int, expert: int, num_experts: int) -> str:
    """``moe/tokens/layer_07/expert_03``."""
    return f"{moe_key(stat, layer_number, num_layers)}/{index_tag('expert', expert, num_experts)}"


@_cached
def attention_key(
    stat: str, layer_number: int, num_layers: int, head: int | None = None, num_heads: int = 0
) -> str:
    """``attn/entropy/layer_07/head_03``; without a head, the layer's mean over heads."""
    key = f"attn/{stat}/{layer_tag(layer_number, num_layers)}"
    return key if head is None else f"{key}/{index_tag('head', head, num_heads)}"


@_cached
def weight_key(stat: str, layer_number: int, num_layers: int, family: str) -> str:
    """``weights/sparsity/layer_07/linear_qkv``."""
    return f"weights/{stat}/{layer_tag(layer_number, num_layers)}/{family}"
