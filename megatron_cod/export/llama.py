"""A dense single-rank megatron GPTModel as an in-memory Hugging Face Llama (the analysis twin).

Directory exports go through ``exporter.export_checkpoint``; both use the rules of ``mapping``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import LlamaForCausalLM

from megatron_cod.export.exporter import hf_model_twin


def to_llama(model: torch.nn.Module, rope_theta: float) -> LlamaForCausalLM:
    """An fp32 LlamaForCausalLM computing the same function as a single-rank dense GPTModel.

    rope_theta is the model config's rotary base (megatron keeps only the derived inv_freq).
    """
    from megatron_cod.config import ModelConfig

    gpt: Any = model  # a GPTModel: megatron's attributes are not visible through nn.Module
    cfg = gpt.config
    if cfg.num_moe_experts:
        raise ValueError("to_llama exports dense models; this model has MoE layers")
    heads = cfg.num_attention_heads
    groups = cfg.num_query_groups or heads
    model_cfg = ModelConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=heads,
        group_query_attention=groups != heads,
        num_query_groups=groups if groups != heads else None,
        seq_length=gpt.max_sequence_length,
        normalization=cfg.normalization,
        swiglu=cfg.gated_linear_unit,
        rotary_base=int(rope_theta),
        untie_embeddings_and_output_weights=not gpt.share_embeddings_and_output_weights,
        layernorm_epsilon=cfg.layernorm_epsilon,
        layernorm_scaling=any(
            "layernorm_scaling" in getattr(layer, "variants", ()) for layer in gpt.decoder.layers
        ),
    )
    return cast(LlamaForCausalLM, hf_model_twin(model, model_cfg))
