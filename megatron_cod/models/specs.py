"""Megatron-core layer specs for dense and MoE GPT layers, local or Transformer Engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cod.models.layer import CodTransformerLayer


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


def _with_cod_layer(spec: ModuleSpec, variants: tuple[str, ...]) -> ModuleSpec:
    return dataclasses.replace(spec, module=CodTransformerLayer,
                               params={**(spec.params or {}), "variants": variants})


def build_block_spec(config: TransformerConfig, use_transformer_engine: bool,
                     variants: tuple[str, ...], vp_stage: int | None = None) -> TransformerBlockSubmodules:
    """megatron's decoder block spec (dense / MoE per moe_layer_freq) with our layer class.

    megatron slices the block spec to this pipeline stage's layers; each layer still learns its
    global layer number from megatron's pipeline offset.
    """
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=use_transformer_engine,
                                       normalization=config.normalization, vp_stage=vp_stage)
    block.layer_specs = [_with_cod_layer(s, variants) for s in block.layer_specs]
    return block
