"""A megatron TransformerLayer with the norms of every placement and named depth variants.

megatron's layer is Pre-LN: ``h + F(Norm(h))``. The placements add at most two norms per
sublayer, declared as submodules of the spec (IdentityOp when absent, so a Pre-LN layer has
exactly megatron's parameters and checkpoint keys):

- Peri-LN ``h + Norm_out(F(Norm_in(h)))``: ``self_attn_output_layernorm`` / ``mlp_output_layernorm``
  normalise the branch (attention, or MLP / MoE incl. a shared expert) before the residual add;
- Post-LN ``Norm(h + F(h))``: ``post_self_attn_layernorm`` / ``post_mlp_layernorm`` normalise the
  stream after each residual add (the spec leaves the input norms out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_cod.models.variants import LAYER_VARIANTS

LAYER_PLACEMENTS = ("pre", "post", "peri")
PLACEMENT_NORMS = (
    "self_attn_output_layernorm",
    "mlp_output_layernorm",
    "post_self_attn_layernorm",
    "post_mlp_layernorm",
)


@dataclasses.dataclass
class CodTransformerLayerSubmodules(TransformerLayerSubmodules):
    """megatron's layer submodules plus the norms of the Peri-LN and Post-LN placements."""

    self_attn_output_layernorm: ModuleSpec | type = IdentityOp
    mlp_output_layernorm: ModuleSpec | type = IdentityOp
    post_self_attn_layernorm: ModuleSpec | type = IdentityOp
    post_mlp_layernorm: ModuleSpec | type = IdentityOp


def _normalise_branch(norm: torch.nn.Module) -> Callable[[torch.nn.Module, Any, Any], Any]:
    """Forward hook turning a branch's ``(output, bias)`` into ``(Norm(output + bias), None)``."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        out, bias = output
        return norm(out if bias is None else out + bias), None

    return hook


class CodTransformerLayer(TransformerLayer):
    """megatron's TransformerLayer plus the placement norms and named variants (variants.LAYER_VARIANTS).

    norm_placement ('pre', 'post' or 'peri') names what the spec built; spec_layer_number is the
    global layer number the spec was made for, checked against the one megatron derives from the
    pipeline offset so per-layer specs (Mix-LN) cannot land on the wrong layer. Variants and the
    placement come through ModuleSpec params, so the spec stays the single description of a layer.
    """

    def __init__(
        self,
        *args: Any,
        variants: tuple[str, ...] = (),
        norm_placement: str = "pre",
        spec_layer_number: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if spec_layer_number is not None and spec_layer_number != self.layer_number:
            raise RuntimeError(
                f"layer spec made for global layer {spec_layer_number} was built as layer "
                f"{self.layer_number}: pipeline offsets disagree"
            )
        if norm_placement not in LAYER_PLACEMENTS:
            raise ValueError(f"unknown layer norm placement {norm_placement!r}; known: {LAYER_PLACEMENTS}")
        self.norm_placement = norm_placement
        for name in PLACEMENT_NORMS:
            spec = getattr(self.submodules_config, name, IdentityOp)
            setattr(
                self,
                name,
                build_module(
                    spec,
                    config=self.config,
                    hidden_size=self.config.hidden_size,
                    eps=self.config.layernorm_epsilon,
                ),
            )
        # Branch output norms act on the branch module's output, like any variant hook, so a
        # telemetry hook registered later sees the branch as it is added to the residual stream.
        for branch, norm in (
            (self.self_attention, self.self_attn_output_layernorm),
            (self.mlp, self.mlp_output_layernorm),
        ):
            if not isinstance(norm, IdentityOp):
                branch.register_forward_hook(_normalise_branch(norm))
        unknown = [v for v in variants if v not in LAYER_VARIANTS]
        if unknown:
            raise ValueError(f"unknown layer variant(s) {unknown}; known: {sorted(LAYER_VARIANTS)}")
        self.variants = tuple(variants)
        for name in self.variants:
            LAYER_VARIANTS[name](self)

    # The stream after each residual add has no module of its own, so the Post-LN norms wrap the two
    # methods that end in an add (IdentityOp for the other placements).
    def _forward_attention(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        hidden_states, context = super()._forward_attention(*args, **kwargs)
        return self.post_self_attn_layernorm(hidden_states), context

    def _forward_post_mlp(self, mlp_output_with_bias: Any, residual: torch.Tensor) -> torch.Tensor:
        return self.post_mlp_layernorm(super()._forward_post_mlp(mlp_output_with_bias, residual))
