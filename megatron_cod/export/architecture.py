"""Which stock Hugging Face class computes a megatron_cod model exactly, and its config.

Dense models (MHA / GQA / MQA) are ``LlamaForCausalLM``. MoE models are ``MixtralForCausalLM`` when
Mixtral is exact (every layer MoE, no shared expert, top-k of the logits then softmax over the k,
which equals softmax over all experts then renormalising the k), otherwise ``Qwen2MoeForCausalLM``:
mixed dense/MoE layers through ``mlp_only_layers``, pre-softmax routing (softmax over all experts,
top-k, no renormalisation) as ``norm_topk_prob=False``, shared experts.

Anything a stock class cannot express is refused here, before a checkpoint is loaded or a file is
written. Unknown ModelConfig fields (added later, e.g. new depth mitigations) are refused too unless
they keep their default, so a new feature is never silently dropped from an export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transformers import LlamaConfig, MixtralConfig, PretrainedConfig, Qwen2MoeConfig

from megatron_cod.export.errors import ExportError

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}

# Fields that change the function and are mapped (or refused) below.
_MAPPED = {
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "group_query_attention",
    "num_query_groups",
    "max_position_embeddings",
    "normalization",
    "swiglu",
    "position_embedding_type",
    "rotary_base",
    "untie_embeddings_and_output_weights",
    "layernorm_epsilon",
    "layernorm_scaling",
    "num_experts",
    "moe_router_topk",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
    "moe_router_pre_softmax",
    "moe_layer_freq",
    "norm_placement",
}
# Fields that only shape training (initialisation, dropout, losses, kernels, precision, lengths).
_TRAINING_ONLY = {
    "seq_length",
    "vocab_size",
    "init_method_std",
    "hidden_dropout",
    "attention_dropout",
    "moe_aux_loss_coeff",
    "moe_z_loss_coeff",
    "moe_token_dispatcher_type",
    "recompute_granularity",
    "recompute_method",
    "recompute_num_layers",
    "transformer_impl",
    "bf16",
}


@dataclass(frozen=True)
class Target:
    """The stock class and config a model exports to, plus what the tensor mapping needs to know."""

    family: str  # a key of ARCHITECTURES
    config: PretrainedConfig
    moe_layers: tuple[bool, ...]
    shared_expert: bool
    layernorm_scaling: bool

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.family]


def moe_layer_pattern(num_layers: int, moe_layer_freq: int) -> tuple[bool, ...]:
    """megatron's integer moe_layer_freq: 0-based layer i is MoE when i % freq == 0."""
    return tuple(i % moe_layer_freq == 0 for i in range(num_layers))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def refuse_inexpressible(m: Any) -> None:
    """Raise ExportError naming the first feature of ModelConfig ``m`` no stock class expresses."""
    placement = getattr(m, "norm_placement", "pre")
    if placement != "pre":
        raise ExportError(
            f"norm placement {placement!r} is not expressible by stock Hugging Face classes "
            "(Llama, Mixtral and Qwen2-MoE are Pre-LN)"
        )
    if m.normalization != "RMSNorm":
        raise ExportError(f"{m.normalization} normalization is not expressible as Llama (RMSNorm only)")
    if not m.swiglu:
        raise ExportError("a non-gated GELU MLP (--no-swiglu) is not expressible as Llama (SwiGLU only)")
    if m.position_embedding_type == "learned_absolute":
        raise ExportError("learned absolute positions are not expressible as Llama (RoPE only)")
    if m.position_embedding_type != "rope":
        raise ExportError(
            f"position embedding {m.position_embedding_type!r} is not expressible as Llama (RoPE only)"
        )
    for field in dataclasses.fields(m):
        if field.name in _MAPPED or field.name in _TRAINING_ONLY:
            continue
        if getattr(m, field.name) != _default(field):
            raise ExportError(
                f"model setting {field.name}={getattr(m, field.name)!r} is not expressible by a "
                "stock Hugging Face class"
            )


def export_target(m: Any, vocab_size: int) -> Target:
    """The target for ModelConfig ``m`` with a (padded) vocabulary of ``vocab_size`` rows."""
    refuse_inexpressible(m)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.effective_num_query_groups,
        max_position_embeddings=m.effective_max_position_embeddings,
        rms_norm_eps=m.layernorm_epsilon,
        rope_theta=float(m.rotary_base),
        tie_word_embeddings=not m.untie_embeddings_and_output_weights,
        hidden_act="silu",
        attention_dropout=0.0,
        bos_token_id=None,
    )
    if not m.is_moe:
        config: PretrainedConfig = LlamaConfig(
            **common,
            intermediate_size=m.effective_ffn_hidden_size,
            attention_bias=False,
            mlp_bias=False,
            head_dim=m.head_dim,
        )
        return Target("llama", config, (False,) * m.num_layers, False, m.layernorm_scaling)
    pattern = moe_layer_pattern(m.num_layers, m.moe_layer_freq)
    shared = m.moe_shared_expert_intermediate_size
    if all(pattern) and shared is None and not m.moe_router_pre_softmax:
        config = MixtralConfig(
            **common,
            intermediate_size=m.effective_moe_ffn_hidden_size,
            num_local_experts=m.num_experts,
            num_experts_per_tok=m.moe_router_topk,
            router_jitter_noise=0.0,
            sliding_window=None,
            head_dim=m.head_dim,
        )
        return Target("mixtral", config, pattern, False, m.layernorm_scaling)
    # Qwen2-MoE always builds a shared expert: a model without one gets a zero-width shared expert,
    # whose output is exactly zero (see mapping.py for how a megatron shared expert is made exact).
    config = Qwen2MoeConfig(
        **common,
        intermediate_size=m.effective_ffn_hidden_size,
        moe_intermediate_size=m.effective_moe_ffn_hidden_size,
        shared_expert_intermediate_size=shared or 0,
        num_experts=m.num_experts,
        num_experts_per_tok=m.moe_router_topk,
        norm_topk_prob=not m.moe_router_pre_softmax,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i, moe in enumerate(pattern) if not moe],
        qkv_bias=False,
        use_sliding_window=False,
        sliding_window=None,
    )
    return Target("qwen2_moe", config, pattern, shared is not None, m.layernorm_scaling)


IMPORT_SEQ_LENGTH_CAP = 4096  # an imported model's default training length (cod-train --seq-length overrides)


def _refuse(hf: Any, feature: str) -> None:
    raise ExportError(f"{feature} ({hf.model_type}) is not expressible in megatron_cod's model config")


def import_target(hf: PretrainedConfig) -> tuple[dict[str, Any], Target]:
    """(ModelConfig fields, the Target whose rules read the HF tensors) for a Llama, Mixtral or
    Qwen2-MoE config; anything our ModelConfig cannot express exactly is refused, naming it."""
    family = hf.model_type
    if family not in ARCHITECTURES:
        raise ExportError(f"model_type {family!r} is not importable (Llama, Mixtral, Qwen2-MoE)")
    heads, groups = hf.num_attention_heads, hf.num_key_value_heads or hf.num_attention_heads
    if getattr(hf, "hidden_act", "silu") != "silu":
        _refuse(hf, f"hidden_act {hf.hidden_act!r} (SwiGLU needs silu)")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    if head_dim * heads != hf.hidden_size:
        _refuse(hf, f"head_dim {head_dim} x {heads} heads != hidden_size {hf.hidden_size}")
    rope = getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": hf.rope_theta}
    if rope.get("rope_type", "default") != "default":
        _refuse(hf, f"rope scaling {rope['rope_type']!r}")
    theta = float(rope["rope_theta"])
    if theta != int(theta):
        _refuse(hf, f"non-integral rope_theta {theta}")
    for flag in ("attention_bias", "mlp_bias", "qkv_bias", "use_sliding_window"):
        if getattr(hf, flag, False):
            _refuse(hf, f"{flag}=True")
    if family == "mixtral" and hf.sliding_window is not None:
        _refuse(hf, f"sliding_window {hf.sliding_window}")
    fields: dict[str, Any] = dict(
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        num_attention_heads=heads,
        group_query_attention=groups != heads,
        num_query_groups=groups if groups != heads else None,
        max_position_embeddings=hf.max_position_embeddings,
        seq_length=min(hf.max_position_embeddings, IMPORT_SEQ_LENGTH_CAP),
        rotary_base=int(theta),
        untie_embeddings_and_output_weights=not hf.tie_word_embeddings,
        layernorm_epsilon=hf.rms_norm_eps,
        ffn_hidden_size=hf.intermediate_size,
    )
    if family == "llama":
        return fields, Target(family, hf, (False,) * hf.num_hidden_layers, False, False)
    if family == "mixtral":
        pattern, shared, experts, renormalise = (True,) * hf.num_hidden_layers, 0, hf.num_local_experts, True
        fields.update(moe_ffn_hidden_size=hf.intermediate_size)
    else:
        pattern = tuple(
            i not in hf.mlp_only_layers and (i + 1) % hf.decoder_sparse_step == 0
            for i in range(hf.num_hidden_layers)
        )
        shared, experts, renormalise = hf.shared_expert_intermediate_size, hf.num_experts, hf.norm_topk_prob
        fields.update(
            moe_ffn_hidden_size=hf.moe_intermediate_size, moe_shared_expert_intermediate_size=shared or None
        )
    freq = next(
        (
            n
            for n in range(1, hf.num_hidden_layers + 1)
            if moe_layer_pattern(hf.num_hidden_layers, n) == pattern
        ),
        None,
    )
    if freq is None:
        _refuse(
            hf, f"MoE layer pattern {[int(p) for p in pattern]} (megatron: layer i is MoE when i % N == 0)"
        )
    if renormalise and hf.num_experts_per_tok == 1:
        _refuse(hf, "top-1 routing with renormalised weights (always 1; megatron needs pre-softmax at top-1)")
    fields.update(
        num_experts=experts,
        moe_router_topk=hf.num_experts_per_tok,
        moe_router_pre_softmax=not renormalise,
        moe_layer_freq=freq,
    )
    return fields, Target(family, hf, pattern, bool(shared), False)
