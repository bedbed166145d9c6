"""cod-import: HF Llama / Mixtral / Qwen2-MoE directories -> megatron_cod checkpoints.

- export(import(x)) holds x's tensors bit for bit (x written by transformers' own save_pretrained);
- import(export(model)) gives the model's logits (LayerNorm Scaling folded on the way);
- cod-train --load continues from an import with --no-load-optim (and says so without it).
"""

import json

import pytest
import torch
from safetensors import safe_open
from training_launch import SCHEDULE, train
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, Qwen2MoeConfig

from megatron_cod.analysis.megatron_adapter import load_megatron_stack
from megatron_cod.config import ModelConfig
from megatron_cod.data.tokenizer import load_tokenizer
from megatron_cod.export.architecture import export_target
from megatron_cod.export.cli import export_main, import_main
from megatron_cod.export.hf_dir import save_tokenizer, weight_files, write_model_dir
from megatron_cod.export.verify import megatron_logits, sample_tokens
from megatron_cod.models import padded_vocab_size

SMALL = dict(
    hidden_size=48,
    num_attention_heads=6,
    num_key_value_heads=2,
    num_hidden_layers=3,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
HF_MODELS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, intermediate_size=88, rope_theta=5000.0, **SMALL),
    "llama_tied_mqa": lambda v: LlamaConfig(
        vocab_size=v, intermediate_size=88, **{**SMALL, "num_key_value_heads": 1, "tie_word_embeddings": True}
    ),
    "mixtral": lambda v: MixtralConfig(
        vocab_size=v, intermediate_size=40, num_local_experts=4, num_experts_per_tok=2, **SMALL
    ),
    "qwen2_moe": lambda v: Qwen2MoeConfig(
        vocab_size=v,
        intermediate_size=88,
        moe_intermediate_size=40,
        shared_expert_intermediate_size=56,
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[1],
        qkv_bias=False,
        **SMALL,
    ),
}


@pytest.fixture(scope="module")
def tokenizer(builtin_dataset):
    return load_tokenizer(builtin_dataset.tokenizer_path)


def _hf_dir(path, name, tokenizer):
    torch.manual_seed(len(name))
    hf = AutoModelForCausalLM.from_config(
        HF_MODELS[name](padded_vocab_size(tokenizer.vocab_size, 1)), dtype=torch.float32
    )
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "shared_expert_gate" in pname:
                p.zero_()  # the only gate megatron expresses (sigmoid(0) = 0.5, see export.mapping)
            else:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(path)
    save_tokenizer(path, tokenizer, 64)
    return hf


def _tensors(directory):
    out = {}
    for file in weight_files(directory):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_export_of_import_is_the_original_bit_for_bit(name, world, tokenizer, tmp_path, capsys):
    _hf_dir(tmp_path / "x", name, tokenizer)
    assert import_main(["--hf-model", str(tmp_path / "x"), "--output", str(tmp_path / "ckpt")]) == 0
    assert (
        export_main(
            [
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--output",
                str(tmp_path / "y"),
                "--verify",
                "--no-mlflow",
            ]
        )
        == 0
    )
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    x, y = _tensors(tmp_path / "x"), _tensors(tmp_path / "y")
    assert x.keys() == y.keys()
    assert [k for k in x if not torch.equal(x[k], y[k]) or x[k].dtype != y[k].dtype] == []
    cx, cy = (json.loads((tmp_path / d / "config.json").read_text()) for d in "xy")
    for key in (
        "architectures",
        "hidden_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "rope_parameters",
        "tie_word_embeddings",
        "rms_norm_eps",
        "vocab_size",
        "intermediate_size",
        "num_experts_per_tok",
    ):
        assert cx.get(key) == cy.get(key), key
    assert (tmp_path / "x" / "tokenizer.json").read_bytes() == (
        tmp_path / "y" / "tokenizer.json"
    ).read_bytes()


def test_import_of_export_gives_the_same_logits(world, random_gpt, tokenizer, tmp_path):
    # LayerNorm Scaling, shared expert, mixed dense/MoE layers, pre-softmax routing
    model_cfg = ModelConfig(
        num_layers=3,
        hidden_size=48,
        num_attention_heads=6,
        group_query_attention=True,
        num_query_groups=2,
        ffn_hidden_size=88,
        seq_length=24,
        num_experts=4,
        moe_ffn_hidden_size=40,
        moe_router_pre_softmax=True,
        moe_layer_freq=2,
        moe_shared_expert_intermediate_size=56,
        layernorm_scaling=True,
    )
    model = random_gpt(model_cfg, tokenizer.vocab_size, seed=9)
    target = export_target(model_cfg, padded_vocab_size(tokenizer.vocab_size, 1))
    (tmp_path / "hf").mkdir()
    write_model_dir(tmp_path / "hf", model.state_dict(), target, tokenizer, "fp32", 24, {}, 2**40)
    assert import_main(["--hf-model", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt")]) == 0
    stack, _, _ = load_megatron_stack(tmp_path / "ckpt")
    assert stack.describe()["iteration"] == 0
    ids = sample_tokens(tokenizer.vocab_size, 24, batch=3, seed=4)
    ref, got = megatron_logits(model, ids), megatron_logits(stack.model, ids)
    assert (ref - got).abs().max().item() <= 1e-4
    assert torch.equal(ref.argmax(-1), got.argmax(-1))


def test_training_continues_from_an_import(world, tokenizer, tmp_path):
    _hf_dir(tmp_path / "x", "llama", tokenizer)
    assert import_main(["--hf-model", str(tmp_path / "x"), "--output", str(tmp_path / "ckpt")]) == 0
    model_args = [
        "--num-layers",
        "3",
        "--hidden-size",
        "48",
        "--num-attention-heads",
        "6",
        "--group-query-attention",
        "--num-query-groups",
        "2",
        "--ffn-hidden-size",
        "88",
        "--seq-length",
        "32",
        "--max-position-embeddings",
        "64",
        "--rotary-base",
        "5000",
        "--layernorm-epsilon",
        "1e-6",
    ]
    common = model_args + SCHEDULE + ["--train-iters", "2", "--load", str(tmp_path / "ckpt")]
    refused = train(tmp_path, "optim", common + ["--save", str(tmp_path / "a")], check=False)
    assert refused.returncode != 0 and "--no-load-optim" in refused.stdout + refused.stderr
    train(tmp_path, "cont", common + ["--no-load-optim", "--save", str(tmp_path / "b")])
    assert (tmp_path / "b" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_import_refuses_what_megatron_cod_cannot_express(world, tokenizer, tmp_path, capsys):
    hf = _hf_dir(tmp_path / "x", "qwen2_moe", tokenizer)
    with torch.no_grad():
        hf.model.layers[0].mlp.shared_expert_gate.weight.fill_(0.1)
    hf.save_pretrained(tmp_path / "x")
    capsys.readouterr()
    assert import_main(["--hf-model", str(tmp_path / "x"), "--output", str(tmp_path / "ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shared_expert_gate" in err and "error:" in err
    assert not (tmp_path / "ckpt").exists()

    config = json.loads((tmp_path / "x" / "config.json").read_text())
    (tmp_path / "x" / "config.json").write_text(json.dumps({**config, "qkv_bias": True}))
    assert import_main(["--hf-model", str(tmp_path / "x"), "--output", str(tmp_path / "ckpt")]) == 1
    assert "qkv_bias" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()
