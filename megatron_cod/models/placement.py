"""Normalisation placements as megatron layer specs: Pre-LN, Post-LN, Peri-LN and Mix-LN.

Per sublayer F (attention, or the MLP / MoE block), with h the residual stream:

- ``pre``  (megatron's default): h' = h + F(Norm(h)); final norm before the LM head.
- ``post`` (Vaswani et al. 2017): h' = Norm(h + F(h)); no input norms and no final norm, since
  the last sublayer's output is already normalised (the block's final-norm slot is an IdentityOp).
- ``peri`` (Kim et al., ICML 2025, "Peri-LN"): h' = h + Norm_out(F(Norm_in(h))), separate weights
  for the input and output norms; the final norm is kept, as in the paper. ``embedding_norm`` adds
  the paper's norm on the embedding output (``embedding.output_layernorm``).
- ``mix``  (Li et al. 2024, "Mix-LN"): Post-LN layers 1..floor(alpha L), Pre-LN after them; the
  final norm is kept, because the last layers are Pre-LN. Layers are counted by megatron's global
  layer number, so pipeline and virtual-pipeline stages agree on the boundary.

All norms are megatron's norm modules of the configured type (RMSNorm / LayerNorm; TENorm with the
Transformer Engine spec). With TE the Pre-LN input norm is fused into linear_qkv / linear_fc1; a
Post-LN layer swaps those for TE's plain column-parallel linear, so no input norm remains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_cod.models.layer import CodTransformerLayerSubmodules


@dataclasses.dataclass(frozen=True)
class NormPlacement:
    """The model-level placement; ``layer_kind`` resolves Mix-LN to 'post' / 'pre' per layer."""

    placement: str = "pre"
    mix_ln_post_layers: int = 0
    embedding_norm: bool = False

    def layer_kind(self, layer_number: int) -> str:
        """'pre', 'post' or 'peri' for the global 1-based layer number."""
        if self.placement == "mix":
            return "post" if layer_number <= self.mix_ln_post_layers else "pre"
        return self.placement

    @property
    def final_norm(self) -> bool:
        return self.placement != "post"


def norm_placement(model_cfg: Any) -> NormPlacement:
    """The NormPlacement requested by a ModelConfig."""
    return NormPlacement(
        model_cfg.norm_placement, model_cfg.mix_ln_post_layers, model_cfg.peri_ln_embedding_norm
    )


def _unfused(spec: Any, fused_linear: type | None, plain_linear: type | None) -> Any:
    """``spec`` with each direct submodule of class ``fused_linear`` (norm+linear) made ``plain_linear``."""
    if (
        fused_linear is None
        or not isinstance(spec, ModuleSpec)
        or not dataclasses.is_dataclass(spec.submodules)
    ):
        return spec
    changes = {
        f.name: plain_linear
        for f in dataclasses.fields(spec.submodules)
        if getattr(spec.submodules, f.name) is fused_linear
    }
    submodules: Any = spec.submodules  # a dataclass instance (checked above), never a class
    return (
        dataclasses.replace(spec, submodules=dataclasses.replace(submodules, **changes)) if changes else spec
    )


def place_norms(
    submodules: Any, kind: str, norm: type, fused_linear: type | None = None, plain_linear: type | None = None
) -> CodTransformerLayerSubmodules:
    """megatron's (Pre-LN) layer submodules rearranged for placement ``kind``.

    norm: megatron's norm module class for the added norms; fused_linear / plain_linear: the
    backend's norm+linear class and its norm-free counterpart (None for the local spec, whose
    norms are separate modules).
    """
    base = {f.name: getattr(submodules, f.name) for f in dataclasses.fields(submodules)}
    layer = CodTransformerLayerSubmodules(**base)
    if kind == "pre":
        return layer
    if kind == "peri":
        return dataclasses.replace(layer, self_attn_output_layernorm=norm, mlp_output_layernorm=norm)
    if kind == "post":
        # megatron ships no type information, so mypy cannot see the inherited fields
        return dataclasses.replace(  # type: ignore[call-arg]
            layer,
            input_layernorm=IdentityOp,
            pre_mlp_layernorm=IdentityOp,
            self_attention=_unfused(layer.self_attention, fused_linear, plain_linear),
            mlp=_unfused(layer.mlp, fused_linear, plain_linear),
            post_self_attn_layernorm=norm,
            post_mlp_layernorm=norm,
        )
    raise ValueError(f"unknown layer norm placement {kind!r}")


def attach_embedding_norm(embedding: torch.nn.Module, norm: torch.nn.Module) -> None:
    """Peri-LN's embedding norm: normalise the embedding module's output (``embedding.output_layernorm``)."""
    embedding.add_module("output_layernorm", norm)
    embedding.register_forward_hook(lambda module, args, output: module.output_layernorm(output))
