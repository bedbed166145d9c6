"""Build a megatron GPTModel from our ModelConfig: RMSNorm (Pre-LN by default), SwiGLU, RoPE, untied embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig

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
    """TransformerConfig from our model and parallel sections.

    CUDA-only fusions stay off without CUDA. Weights are initialised on the CPU from one
    master copy so that tensor-parallel shards are slices of the same matrix.
    """
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if model_cfg.bf16 else torch.float32
    kwargs: dict[str, Any] = dict(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.effective_ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.effective_num_query_groups,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        normalization=model_cfg.normalization,
        layernorm_epsilon=model_cfg.layernorm_epsilon,
        gated_linear_unit=model_cfg.swiglu,
        activation_func=F.silu if model_cfg.swiglu else F.gelu,
        add_bias_linear=False,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
        expert_model_parallel_size=parallel_cfg.expert_model_parallel_size,
        sequence_parallel=parallel_cfg.sequence_parallel,
        bf16=model_cfg.bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=True,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        recompute_granularity=model_cfg.recompute_granularity,
        recompute_method=model_cfg.recompute_method,
        recompute_num_layers=model_cfg.recompute_num_layers,
    )
    if model_cfg.is_moe:
        kwargs.update(
            num_moe_experts=model_cfg.num_experts,
            moe_router_topk=model_cfg.moe_router_topk,
            moe_ffn_hidden_size=model_cfg.moe_ffn_hidden_size or model_cfg.effective_ffn_hidden_size,
            moe_aux_loss_coeff=model_cfg.moe_aux_loss_coeff,
            moe_z_loss_coeff=model_cfg.moe_z_loss_coeff,
            moe_shared_expert_intermediate_size=model_cfg.moe_shared_expert_intermediate_size,
            moe_token_dispatcher_type=model_cfg.moe_token_dispatcher_type,
            moe_router_pre_softmax=model_cfg.moe_router_pre_softmax,
            moe_router_load_balancing_type="aux_loss",
            moe_layer_freq=model_cfg.moe_layer_freq,
            moe_grouped_gemm=False,
            moe_router_dtype="fp32",
        )
    if model_cfg.norm_placement == "mix":
        # Mix-LN layers differ in their norms, so megatron cannot stack one tensor per parameter name
        # across layers in the checkpoint: it keys each layer by its global number instead.
        kwargs.update(hetereogenous_dist_checkpoint=True)
    if not on_gpu:
        kwargs.update(masked_softmax_fusion=False, bias_dropout_fusion=False)
    return TransformerConfig(**kwargs)


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
        max_sequence_length=model_cfg.max_position_embeddings or model_cfg.seq_length,
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
