"""Norm placements (pre, post, peri, mix) built from megatron specs equal a plain-PyTorch reference.

The reference (tests/support/reference_gpt.py) is hand-written; it reads the megatron model's
weights by name and is compared in logits and in the gradient of every parameter.
"""

import dataclasses

import pytest
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cod import platform
from megatron_cod.config import ModelConfig, ParallelConfig
from megatron_cod.models import NormPlacement, build_block_spec, build_gpt_model, build_transformer_config
from megatron_cod.models.builder import padded_vocab_size
from megatron_cod.models.placement import place_norms
from reference_gpt import RefArch, forward

VOCAB, SEQ, LAYERS = 64, 16, 4
ARCH = dict(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, group_query_attention=True,
            num_query_groups=2, ffn_hidden_size=64, seq_length=SEQ)
# MoE aux and z losses change router gradients through megatron's loss hooks, not the layer's
# function, so they are off for the comparison.
MOE = dict(num_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2, moe_aux_loss_coeff=0.0, moe_z_loss_coeff=None)
SHARED = dict(MOE, moe_shared_expert_intermediate_size=48)

PLACEMENTS = {
    "pre": dict(),
    "pre_lns": dict(layernorm_scaling=True),
    "post": dict(norm_placement="post"),
    "peri": dict(norm_placement="peri"),
    "peri_embedding_norm": dict(norm_placement="peri", peri_ln_embedding_norm=True),
    "mix": dict(norm_placement="mix", mix_ln_alpha=0.5),
    "mix_lns": dict(norm_placement="mix", mix_ln_alpha=0.25, layernorm_scaling=True),
    # full activation recompute re-runs each layer (and its placement norms) in the backward pass
    "peri_recompute": dict(norm_placement="peri", recompute_granularity="full", recompute_method="uniform",
                           recompute_num_layers=1),
    "mix_recompute": dict(norm_placement="mix", mix_ln_alpha=0.5, recompute_granularity="full",
                          recompute_method="block", recompute_num_layers=2),
}


@pytest.fixture(scope="module", autouse=True)
def world():
    platform.initialize(seed=5)
    yield
    platform.teardown()


def _ref_arch(cfg: ModelConfig) -> RefArch:
    return RefArch(num_layers=cfg.num_layers, heads=cfg.num_attention_heads, groups=cfg.effective_num_query_groups,
                   eps=cfg.layernorm_epsilon, topk=cfg.moe_router_topk, placement=cfg.norm_placement,
                   mix_alpha=cfg.mix_ln_alpha, layernorm_scaling=cfg.layernorm_scaling,
                   embedding_norm=cfg.peri_ln_embedding_norm)


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norm weights start at 1; make each distinct so a swapped or skipped norm shows."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=g))


@pytest.mark.parametrize("moe", [None, MOE, SHARED], ids=["dense", "moe", "moe_shared_expert"])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_spec_layer_equals_plain_pytorch_reference(placement, moe):
    cfg = ModelConfig(**ARCH, **(moe or {}), **PLACEMENTS[placement])
    model = build_gpt_model(cfg, VOCAB, ParallelConfig())
    _randomise_norms(model)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    probe = torch.randn(2, SEQ, padded_vocab_size(VOCAB, 1), generator=g)

    logits = model(tokens, torch.arange(SEQ).unsqueeze(0), None)
    (logits * probe).sum().backward()

    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    ref_logits, _ = forward(tokens, params, _ref_arch(cfg))
    ref_grads = torch.autograd.grad((ref_logits * probe).sum(), list(params.values()), allow_unused=True)

    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for (name, p), want in zip(model.named_parameters(), ref_grads):
        assert want is not None, f"{name} is not used by the reference"
        # fp32 tolerance on the tensor's own scale (summation order differs, e.g. MoE permutation)
        atol = 1e-5 * want.abs().max().item()
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def _layer_norm_params(model: torch.nn.Module) -> list[set[str]]:
    return [{n.split(".")[0] for n, _ in layer.named_parameters() if "layernorm" in n}
            for layer in model.decoder.layers]


def test_parameters_of_each_placement():
    pre_in = {"input_layernorm", "pre_mlp_layernorm"}
    post = {"post_self_attn_layernorm", "post_mlp_layernorm"}
    peri = pre_in | {"self_attn_output_layernorm", "mlp_output_layernorm"}
    models = {name: build_gpt_model(ModelConfig(**ARCH, **kw), VOCAB, ParallelConfig())
              for name, kw in PLACEMENTS.items()}
    assert _layer_norm_params(models["pre"]) == [pre_in] * LAYERS
    assert _layer_norm_params(models["post"]) == [post] * LAYERS
    assert _layer_norm_params(models["peri"]) == [peri] * LAYERS
    assert _layer_norm_params(models["mix"]) == [post, post, pre_in, pre_in]
    for name, model in models.items():
        has_final = "decoder.final_layernorm.weight" in model.state_dict()
        assert has_final == (name != "post"), name
        assert isinstance(model.decoder.final_layernorm, IdentityOp) == (name == "post")
        assert ("embedding.output_layernorm.weight" in model.state_dict()) == (name == "peri_embedding_norm")
    assert [layer.norm_placement for layer in models["mix"].decoder.layers] == ["post", "post", "pre", "pre"]


def test_pre_is_megatron_stock_gpt_bit_for_bit():
    """The default placement adds no parameter and changes no number of megatron's own local spec."""
    cfg = ModelConfig(**ARCH, **MOE)
    ours = build_gpt_model(cfg, VOCAB, ParallelConfig())
    config = build_transformer_config(cfg, ParallelConfig())
    stock = GPTModel(config=config, transformer_layer_spec=get_gpt_decoder_block_spec(
                         config, use_transformer_engine=False, normalization="RMSNorm"),
                     vocab_size=padded_vocab_size(VOCAB, 1), max_sequence_length=SEQ,
                     share_embeddings_and_output_weights=False, position_embedding_type="rope")
    assert list(stock.state_dict()) == list(ours.state_dict())
    stock.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    pos = torch.arange(SEQ).unsqueeze(0)
    assert torch.equal(stock(tokens, pos, None), ours(tokens, pos, None))


def _kinds(config: TransformerConfig, placement: NormPlacement, pp: int, vpp: int | None) -> dict[int, str]:
    kinds = {}
    for rank in range(pp):
        for stage in range(vpp) if vpp else [None]:
            block = build_block_spec(config, False, (), stage, placement, pp_rank=rank)
            for spec in block.layer_specs:
                n = spec.params["spec_layer_number"]
                assert n not in kinds
                kinds[n] = spec.params["norm_placement"]
    return kinds


@pytest.mark.parametrize("pp,vpp", [(1, None), (2, None), (2, 2), (4, 2)])
def test_mix_ln_boundary_on_global_layer_numbers(pp, vpp):
    cfg = ModelConfig(num_layers=16, hidden_size=32, num_attention_heads=4, norm_placement="mix", mix_ln_alpha=0.25)
    assert cfg.mix_ln_post_layers == 4
    config = dataclasses.replace(build_transformer_config(cfg, ParallelConfig()), pipeline_model_parallel_size=pp,
                                 virtual_pipeline_model_parallel_size=vpp)
    placement = NormPlacement("mix", cfg.mix_ln_post_layers)
    kinds = _kinds(config, placement, pp, vpp)
    assert kinds == {n: "post" if n <= 4 else "pre" for n in range(1, 17)}
    # With virtual stages, rank 0 holds layers 1-4 and 9-12: the boundary is by global number, not by chunk.
    if vpp == 2 and pp == 2:
        second_chunk = build_block_spec(config, False, (), 1, placement, pp_rank=0).layer_specs
        assert [s.params["spec_layer_number"] for s in second_chunk] == [9, 10, 11, 12]
        assert {s.params["norm_placement"] for s in second_chunk} == {"pre"}


def test_layer_refuses_a_spec_made_for_another_layer_number():
    cfg = ModelConfig(**ARCH)
    config = build_transformer_config(cfg, ParallelConfig())
    spec = build_block_spec(config, False, ()).layer_specs[2]
    with pytest.raises(RuntimeError, match="made for global layer 3 was built as layer 1"):
        build_module(spec, config=config, layer_number=1)


class _FusedNormLinear(ColumnParallelLinear):
    """Stands in for Transformer Engine's TELayerNormColumnParallelLinear (TE needs CUDA)."""


def test_post_layer_unfuses_te_style_norm_linears():
    local = get_gpt_layer_local_spec(normalization="RMSNorm").submodules
    attention = dataclasses.replace(local.self_attention, submodules=dataclasses.replace(
        local.self_attention.submodules, linear_qkv=_FusedNormLinear))
    mlp = dataclasses.replace(local.mlp, submodules=dataclasses.replace(local.mlp.submodules,
                                                                        linear_fc1=_FusedNormLinear))
    te_like = dataclasses.replace(local, input_layernorm=IdentityOp, pre_mlp_layernorm=IdentityOp,
                                  self_attention=attention, mlp=mlp)
    norm = local.input_layernorm
    post = place_norms(te_like, "post", norm, _FusedNormLinear, ColumnParallelLinear)
    assert post.self_attention.submodules.linear_qkv is ColumnParallelLinear
    assert post.mlp.submodules.linear_fc1 is ColumnParallelLinear
    assert post.input_layernorm is IdentityOp and post.pre_mlp_layernorm is IdentityOp
    assert post.post_self_attn_layernorm is norm and post.post_mlp_layernorm is norm
    peri = place_norms(te_like, "peri", norm, _FusedNormLinear, ColumnParallelLinear)
    assert peri.self_attention.submodules.linear_qkv is _FusedNormLinear  # Peri-LN keeps the fused input norm
    assert peri.self_attn_output_layernorm is norm and peri.mlp_output_layernorm is norm
