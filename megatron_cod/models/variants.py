"""Depth-related layer variants: the hook point where depth mitigations plug into a layer.

A variant is a function applied to a freshly built megatron TransformerLayer. Variants attach
behaviour (forward hooks) instead of swapping submodules, so parameter names, the sharded state
dict and checkpoint/export mappings stay exactly megatron's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from megatron.core.transformer.identity_op import IdentityOp


def _scale_first_output(scale: float) -> Callable[[torch.nn.Module, Any, Any], Any]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] * scale, *output[1:])
        return output * scale

    return hook


def layernorm_scaling_factor(layer_number: int) -> float:
    """LayerNorm Scaling (Sun et al. 2025): 1/sqrt(l) for the global 1-based layer number l."""
    if layer_number < 1:
        raise ValueError(f"layer_number is 1-based, got {layer_number}")
    return 1.0 / math.sqrt(layer_number)


def apply_layernorm_scaling(layer: torch.nn.Module) -> None:
    """Scale the normalised inputs of both sub-layers by 1/sqrt(layer_number) in a Pre-LN layer.

    Under Mix-LN only the Pre-LN layers are scaled (by their global layer number); its Post-LN
    layers are left as they are. Post-LN and Peri-LN models are refused by the config.

    With the local spec the norms are separate modules and their outputs are scaled. With the TE
    spec the input norm is fused into linear_qkv / linear_fc1; scaling the fused linear's output is
    the same map because our projections have no bias (checked here).
    """
    placement = layer.norm_placement
    if placement == "post":
        return  # a Post-LN layer (the bottom of Mix-LN) has no sub-layer input norm to scale
    if placement != "pre":
        raise ValueError(f"LayerNorm Scaling is defined for Pre-LN layers, not {placement!r}")
    scale = layernorm_scaling_factor(cast(int, layer.layer_number))
    hook = _scale_first_output(scale)
    for norm_name, fused_owner, fused_linear in (
        ("input_layernorm", "self_attention", "linear_qkv"),
        ("pre_mlp_layernorm", "mlp", "linear_fc1"),
    ):
        norm = getattr(layer, norm_name)
        if not isinstance(norm, IdentityOp):
            norm.register_forward_hook(hook)
            continue
        linear = getattr(getattr(layer, fused_owner), fused_linear)
        if getattr(linear, "bias", None) is not None:
            raise ValueError("LayerNorm Scaling on a fused norm+linear needs --disable-bias-linear")
        linear.register_forward_hook(hook)


LAYER_VARIANTS: dict[str, Callable[[torch.nn.Module], None]] = {
    "layernorm_scaling": apply_layernorm_scaling,
}
