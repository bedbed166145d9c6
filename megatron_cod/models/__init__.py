"""Model construction: megatron-core specs with norm placements (Pre/Post/Peri/Mix-LN) and depth variants (LNS)."""

from megatron_cod.models.builder import (
    build_gpt_model,
    build_transformer_config,
    padded_vocab_size,
)
from megatron_cod.models.placement import NormPlacement, norm_placement
from megatron_cod.models.specs import build_block_spec, layer_variants, transformer_engine_usable
from megatron_cod.models.variants import LAYER_VARIANTS, layernorm_scaling_factor

__all__ = [
    "build_gpt_model",
    "build_transformer_config",
    "padded_vocab_size",
    "build_block_spec",
    "layer_variants",
    "transformer_engine_usable",
    "LAYER_VARIANTS",
    "layernorm_scaling_factor",
    "NormPlacement",
    "norm_placement",
]
