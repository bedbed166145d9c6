"""The one translation from our model and parallel sections to megatron's TransformerConfig.

Driven by the dataclass fields: every field of ours that TransformerConfig also has is passed under
its name (its ``effective_<name>`` value where the section defines one, e.g. the GQA group count or
the default FFN width); RENAMED fields are passed under megatron's name; ELSEWHERE says where each
remaining field goes instead. A field that is in none of these fails the translation's test, so a new
config field cannot be silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cod.config.model import ModelConfig
from megatron_cod.config.parallel import ParallelConfig

RENAMED = {"swiglu": "gated_linear_unit", "num_experts": "num_moe_experts"}

ELSEWHERE = {
    "group_query_attention": "folded into effective_num_query_groups",
    "seq_length": "the schedules' seq_length and the datasets",
    "max_position_embeddings": "GPTModel(max_sequence_length=)",
    "vocab_size": "the tokenizer; GPTModel(vocab_size=) padded per TP",
    "position_embedding_type": "GPTModel(position_embedding_type=)",
    "rotary_base": "GPTModel(rotary_base=)",
    "untie_embeddings_and_output_weights": "GPTModel(share_embeddings_and_output_weights=)",
    "layernorm_scaling": "a layer variant (models/variants.py)",
    "norm_placement": "the layer spec (models/placement.py)",
    "mix_ln_alpha": "the layer spec (models/placement.py)",
    "peri_ln_embedding_norm": "the embedding norm (models/placement.py)",
    "use_distributed_optimizer": "megatron's DDP and optimizer configs (training/)",
}

_TRANSFORMER_FIELDS = frozenset(f.name for f in dataclasses.fields(TransformerConfig))
_MOE_ONLY = frozenset(
    {"num_experts", "moe_layer_freq"}
    | {f.name for f in dataclasses.fields(ModelConfig) if f.name.startswith("moe_")}
)


def _value(section: Any, name: str) -> Any:
    effective = f"effective_{name}"
    return getattr(section, effective) if hasattr(type(section), effective) else getattr(section, name)


def translated_fields(model_cfg: ModelConfig, parallel_cfg: ParallelConfig) -> dict[str, Any]:
    """{TransformerConfig field: value} for every field of ours megatron takes (MoE ones only for MoE)."""
    out: dict[str, Any] = {}
    for section in (model_cfg, parallel_cfg):
        for f in dataclasses.fields(section):
            if f.name in ELSEWHERE or (f.name in _MOE_ONLY and not model_cfg.is_moe):
                continue
            target = RENAMED.get(f.name, f.name)
            if target not in _TRANSFORMER_FIELDS:
                raise TypeError(
                    f"{type(section).__name__}.{f.name} has no home: add it to RENAMED or ELSEWHERE"
                )
            out[target] = _value(section, f.name)
    if out.get("moe_z_loss_coeff") == 0:
        # Our 0 means z-loss off, which megatron spells None: given 0 it still computes the loss
        # and tracks z_loss / coefficient = 0/0 = NaN for every MoE layer.
        out["moe_z_loss_coeff"] = None
    return out


def transformer_config(model_cfg: ModelConfig, parallel_cfg: ParallelConfig) -> TransformerConfig:
    """TransformerConfig for our model on ``parallel_cfg``'s layout.

    Besides the translated fields: the activation, no linear biases, dtypes, weights initialised on
    the CPU from one master copy (so TP shards are slices of the same matrix), and CUDA-only fusions
    off without CUDA.
    """
    dtype = torch.bfloat16 if model_cfg.bf16 else torch.float32
    kwargs = translated_fields(model_cfg, parallel_cfg)
    kwargs.update(
        activation_func=F.silu if model_cfg.swiglu else F.gelu,
        add_bias_linear=False,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=True,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
    )
    if model_cfg.is_moe:
        kwargs.update(
            moe_router_load_balancing_type="aux_loss",
            moe_grouped_gemm=False,
            moe_router_dtype="fp32",
        )
    if model_cfg.norm_placement == "mix":
        # Mix-LN layers differ in their norms, so megatron cannot stack one tensor per parameter name
        # across layers in the checkpoint: it keys each layer by its global number instead.
        kwargs.update(hetereogenous_dist_checkpoint=True)
    if not torch.cuda.is_available():
        kwargs.update(masked_softmax_fusion=False, bias_dropout_fusion=False)
    return TransformerConfig(**kwargs)
