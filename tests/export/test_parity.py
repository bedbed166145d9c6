"""Export parity on seeded random models with odd sizes: the written directory, loaded by stock
``AutoModelForCausalLM``, gives megatron's fp32 logits to 1e-4 with the same top-1 everywhere.

Widths are not powers of two (hidden 48, FFN 88, expert 40, vocabulary 300 padded to 384), heads
6 query / 2 key-value groups; every weight (norms and routers included) is perturbed away from its
initialisation so that a transposed, swapped or unscaled tensor shows up in the logits.
"""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_cod.config import ModelConfig
from megatron_cod.export.architecture import export_target
from megatron_cod.export.hf_dir import PROVENANCE_FILE, write_model_dir
from megatron_cod.export.verify import compare_logits, megatron_logits, sample_tokens
from megatron_cod.models import padded_vocab_size

BASE = dict(
    num_layers=3,
    hidden_size=48,
    num_attention_heads=6,
    ffn_hidden_size=88,
    seq_length=24,
    rotary_base=5000,
    layernorm_epsilon=1e-6,
)
GQA = dict(group_query_attention=True, num_query_groups=2)
MOE = dict(num_experts=4, moe_ffn_hidden_size=40, moe_router_pre_softmax=False, **GQA)

CASES = {
    "mha": ({}, "LlamaForCausalLM"),
    "gqa": (GQA, "LlamaForCausalLM"),
    "mqa": (dict(group_query_attention=True, num_query_groups=1), "LlamaForCausalLM"),
    "gqa_tied": (dict(untie_embeddings_and_output_weights=False, **GQA), "LlamaForCausalLM"),
    "gqa_layernorm_scaling": (dict(layernorm_scaling=True, **GQA), "LlamaForCausalLM"),
    # megatron needs pre-softmax routing at top-1 (a softmax over one logit has no gradient)
    "moe_top1": (dict(MOE, moe_router_topk=1, moe_router_pre_softmax=True), "Qwen2MoeForCausalLM"),
    "moe_top2_tied": (
        dict(MOE, moe_router_topk=2, untie_embeddings_and_output_weights=False),
        "MixtralForCausalLM",
    ),
    "moe_pre_softmax": (dict(MOE, moe_router_topk=2, moe_router_pre_softmax=True), "Qwen2MoeForCausalLM"),
    "moe_shared_expert": (
        dict(MOE, moe_router_topk=2, moe_shared_expert_intermediate_size=56),
        "Qwen2MoeForCausalLM",
    ),
    "moe_mixed_dense_layers": (dict(MOE, moe_router_topk=2, moe_layer_freq=2), "Qwen2MoeForCausalLM"),
    "moe_everything": (
        dict(
            MOE,
            moe_router_topk=2,
            moe_router_pre_softmax=True,
            moe_layer_freq=2,
            moe_shared_expert_intermediate_size=56,
            layernorm_scaling=True,
        ),
        "Qwen2MoeForCausalLM",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_matches_megatron_logits(case, world, random_gpt, tokenizer, tmp_path):
    overrides, architecture = CASES[case]
    model_cfg = ModelConfig(**BASE, **overrides)
    model = random_gpt(model_cfg, tokenizer.vocab_size, seed=len(case))
    vocab = padded_vocab_size(tokenizer.vocab_size, 1)
    target = export_target(model_cfg, vocab)
    assert target.architecture == architecture
    write_model_dir(tmp_path, model.state_dict(), target, tokenizer, "fp32", 24, {"case": case}, 2**40)

    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == architecture
    ids = sample_tokens(tokenizer.vocab_size, 24, batch=3, seed=1)
    with torch.no_grad():
        parity = compare_logits(megatron_logits(model, ids), hf(input_ids=ids).logits)
    assert parity.max_abs_diff <= 1e-4, parity
    assert parity.top1_agreement == 1.0, parity
    # the logits are not trivially equal (e.g. both constant): they vary over the vocabulary
    assert megatron_logits(model, ids).std() > 0.1

    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("to be or not").input_ids == tokenizer.tokenize("to be or not")
    assert tok.eos_token == tokenizer.eod_token and tok.pad_token == tokenizer.pad_token
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text()) == {"case": case}
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == vocab


def test_sharded_bf16_export_has_an_index_and_rounds_every_tensor(world, random_gpt, tokenizer, tmp_path):
    model_cfg = ModelConfig(**BASE, **CASES["moe_shared_expert"][0])
    model = random_gpt(model_cfg, tokenizer.vocab_size, seed=3)
    target = export_target(model_cfg, padded_vocab_size(tokenizer.vocab_size, 1))
    files = write_model_dir(tmp_path, model.state_dict(), target, tokenizer, "bf16", 24, {}, 64 * 1024)
    assert len(files) > 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(files)
    state = model.state_dict()
    with safe_open(
        tmp_path / index["weight_map"]["model.layers.0.mlp.experts.3.down_proj.weight"], "pt"
    ) as f:
        down = f.get_tensor("model.layers.0.mlp.experts.3.down_proj.weight")
    assert down.dtype == torch.bfloat16
    assert torch.equal(
        down, state["decoder.layers.0.mlp.experts.local_experts.3.linear_fc2.weight"].bfloat16()
    )
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = sample_tokens(tokenizer.vocab_size, 24, seed=2)
    with torch.no_grad():
        parity = compare_logits(megatron_logits(model, ids), hf(input_ids=ids).logits)
    # bf16 weights: close, not exact
    assert 1e-4 < parity.max_abs_diff < 0.5 and parity.top1_agreement > 0.8
