"""A dense megatron GPTModel (RMSNorm, SwiGLU, RoPE, GQA, no biases) as a Hugging Face Llama.

Layout differences handled here: megatron stores q, k and v interleaved per query group in one
``linear_qkv`` matrix ([q heads of group g; k_g; v_g] for each group), and the SwiGLU ``linear_fc1``
as [gate; up]. Llama has no LayerNorm Scaling, so models trained with it are refused rather than
exported into something that computes a different function.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def _split_qkv(weight: torch.Tensor, heads: int, groups: int, head_dim: int):
    per_group = heads // groups
    w = weight.view(groups, (per_group + 2) * head_dim, -1)
    q, k, v = torch.split(w, [per_group * head_dim, head_dim, head_dim], dim=1)
    hidden = weight.shape[-1]
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def to_llama(model: torch.nn.Module, rope_theta: float) -> LlamaForCausalLM:
    """An fp32 LlamaForCausalLM computing the same function as a single-rank dense GPTModel.

    rope_theta is the model config's rotary base (megatron keeps only the derived inv_freq).
    """
    cfg = model.config
    if cfg.num_moe_experts:
        raise ValueError("to_llama exports dense models; this model has MoE layers")
    if cfg.add_bias_linear or not cfg.gated_linear_unit or cfg.normalization != "RMSNorm":
        raise ValueError("to_llama needs a bias-free SwiGLU RMSNorm model")
    if any(getattr(layer, "variants", ()) for layer in model.decoder.layers):
        raise ValueError("Llama has no LayerNorm Scaling; this model was trained with depth variants")
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads
    head_dim = cfg.kv_channels or cfg.hidden_size // heads
    hf_config = LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=len(model.decoder.layers), num_attention_heads=heads, num_key_value_heads=groups,
        head_dim=head_dim, max_position_embeddings=model.max_sequence_length, rms_norm_eps=cfg.layernorm_epsilon,
        rope_theta=float(rope_theta),
        tie_word_embeddings=model.share_embeddings_and_output_weights, attention_bias=False, mlp_bias=False,
    )
    sd = {"model.embed_tokens.weight": model.embedding.word_embeddings.weight,
          "model.norm.weight": model.decoder.final_layernorm.weight,
          "lm_head.weight": model.output_layer.weight if model.output_layer.weight is not None
          else model.embedding.word_embeddings.weight}
    for i, layer in enumerate(model.decoder.layers):
        p = f"model.layers.{i}."
        q, k, v = _split_qkv(layer.self_attention.linear_qkv.weight, heads, groups, head_dim)
        gate, up = torch.chunk(layer.mlp.linear_fc1.weight, 2, dim=0)
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v,
                   p + "self_attn.o_proj.weight": layer.self_attention.linear_proj.weight,
                   p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                   p + "mlp.down_proj.weight": layer.mlp.linear_fc2.weight,
                   p + "input_layernorm.weight": layer.input_layernorm.weight,
                   p + "post_attention_layernorm.weight": layer.pre_mlp_layernorm.weight})
    hf = LlamaForCausalLM(hf_config).float()
    missing, unexpected = hf.load_state_dict({k: v.detach().float().clone() for k, v in sd.items()}, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"Llama export mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval()

