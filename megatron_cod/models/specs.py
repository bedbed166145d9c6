"""Megatron-core layer specs for dense and MoE GPT layers, local or Transformer Engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_cod.models.layer import CodTransformerLayer
from megatron_cod.models.placement import NormPlacement, place_norms


def transformer_engine_usable() -> bool:
    """TE kernels need both an importable TE and a CUDA device.

    Importing TE on a machine without CUDA can die with a RuntimeError (missing cudnn), which is
    why this is checked only when CUDA is present.
    """
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def layer_variants(model_cfg: Any) -> tuple[str, ...]:
    """The depth variants requested by a ModelConfig, in application order."""
    return ("layernorm_scaling",) if model_cfg.layernorm_scaling else ()


def standalone_norm(config: TransformerConfig, use_transformer_engine: bool) -> type:
    """megatron's module for a norm of its own: TENorm, or the local spec's input-norm class."""
    if use_transformer_engine:
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return get_gpt_layer_local_spec(normalization=config.normalization).submodules.input_layernorm


def _fused_and_plain_linear(use_transformer_engine: bool) -> tuple[type | None, type | None]:
    """The backend's norm+linear class and its norm-free counterpart (none with the local spec)."""
    if not use_transformer_engine:
        return None, None
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TELayerNormColumnParallelLinear,
    )

    return TELayerNormColumnParallelLinear, TEColumnParallelLinear


def _cod_layer(
    spec: ModuleSpec,
    layer_number: int,
    kind: str,
    variants: tuple[str, ...],
    norm: type,
    fused: type | None,
    plain: type | None,
) -> ModuleSpec:
    return dataclasses.replace(
        spec,
        module=CodTransformerLayer,
        submodules=place_norms(spec.submodules, kind, norm, fused, plain),
        params={
            **(spec.params or {}),
            "variants": variants,
            "norm_placement": kind,
            "spec_layer_number": layer_number,
        },
    )


def build_block_spec(
    config: TransformerConfig,
    use_transformer_engine: bool,
    variants: tuple[str, ...],
    vp_stage: int | None = None,
    placement: NormPlacement = NormPlacement(),
    pp_rank: int | None = None,
) -> TransformerBlockSubmodules:
    """megatron's decoder block spec (dense / MoE per moe_layer_freq) with our layer class and norms.

    megatron slices the block spec to this pipeline stage's layers (pp_rank None: this process's
    rank); the stage's i-th spec is for global layer offset + i + 1, with megatron's own offset,
    which is how each layer's norm kind (Mix-LN) is chosen. The layer checks that number again
    against the one it derives itself.
    """
    if config.pipeline_model_parallel_layout is not None:
        raise ValueError("custom pipeline layouts are not supported by megatron_cod's layer specs")
    block = get_gpt_decoder_block_spec(
        config,
        use_transformer_engine=use_transformer_engine,
        normalization=config.normalization,
        vp_stage=vp_stage,
        pp_rank=pp_rank,
    )
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    norm = standalone_norm(config, use_transformer_engine)
    fused, plain = _fused_and_plain_linear(use_transformer_engine)
    block.layer_specs = [
        _cod_layer(spec, offset + i + 1, placement.layer_kind(offset + i + 1), variants, norm, fused, plain)
        for i, spec in enumerate(block.layer_specs)
    ]
    if not placement.final_norm:
        block.layer_norm = IdentityOp
    return block
