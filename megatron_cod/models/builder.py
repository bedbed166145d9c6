"""Build a megatron GPTModel from our ModelConfig: RMSNorm (Pre-LN by default), SwiGLU, RoPE, untied embeddings."""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cod.models.megatron_config import transformer_config
from megatron_cod.models.placement import attach_embedding_norm, norm_placement
from megatron_cod.models.specs import (
    build_block_spec,
    layer_variants,
    standalone_norm,
    transformer_engine_usable,
)

VOCAB_PADDING_MULTIPLE = 128


def padded_vocab_size(vocab_size: int, tensor_model_parallel_size: int) -> int:
    """Megatron pads the vocabulary so each TP shard of the embedding is a multiple of 128."""
    multiple = VOCAB_PADDING_MULTIPLE * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def use_transformer_engine(model_cfg: Any) -> bool:
    if model_cfg.transformer_impl == "local":
        return False
    if not transformer_engine_usable():
        raise RuntimeError(
            "--transformer-impl transformer_engine needs CUDA and an importable "
            "Transformer Engine (pip install 'megatron_cod[gpu]' or an NGC container)"
        )
    return True


def build_transformer_config(model_cfg: Any, parallel_cfg: Any) -> TransformerConfig:
    """TransformerConfig from our model and parallel sections (see models/megatron_config.py)."""
    return transformer_config(model_cfg, parallel_cfg)


def build_gpt_model(
    model_cfg: Any,
    vocab_size: int,
    parallel_cfg: Any | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
) -> GPTModel:
    """One GPTModel chunk for this rank's pipeline stage, on the current device."""
    from megatron_cod.config import ParallelConfig

    parallel_cfg = parallel_cfg or ParallelConfig(
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
        expert_tensor_parallel_size=ps.get_expert_tensor_parallel_world_size(),
    )
    config = build_transformer_config(model_cfg, parallel_cfg)
    te = use_transformer_engine(model_cfg)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    placement = norm_placement(model_cfg)
    model = GPTModel(
        config=config,
        transformer_layer_spec=build_block_spec(config, te, layer_variants(model_cfg), vp_stage, placement),
        vocab_size=padded_vocab_size(vocab_size, parallel_cfg.tensor_model_parallel_size),
        max_sequence_length=model_cfg.effective_max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not model_cfg.untie_embeddings_and_output_weights,
        position_embedding_type=model_cfg.position_embedding_type,
        rotary_base=model_cfg.rotary_base,
        vp_stage=vp_stage,
    )
    if placement.embedding_norm and pre_process:
        attach_embedding_norm(
            model.embedding,
            build_module(
                standalone_norm(config, te),
                config=config,
                hidden_size=config.hidden_size,
                eps=config.layernorm_epsilon,
            ),
        )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
