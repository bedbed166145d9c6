"""Checkpoints trained with the Transformer Engine spec analyse on CPU, without TE, like the local original.

TE cannot run here, so the TE checkpoint is written from a local-spec model with its sharded keys
renamed the way megatron-core 0.16's TE spec names them (get_gpt_layer_with_transformer_engine_spec):
- the attention input norm is fused into linear_qkv (TELayerNormColumnParallelLinear):
  ``self_attention.linear_qkv.layer_norm_weight``; a dense layer's pre-MLP norm into linear_fc1:
  ``mlp.linear_fc1.layer_norm_weight``. megatron's local spec saves both under these names already;
- an MoE layer's pre-MLP norm is a TENorm of its own (``pre_mlp_layernorm=TENorm if num_experts``):
  ``pre_mlp_layernorm.weight``, where the local spec writes ``mlp.linear_fc1.layer_norm_weight``;
- TE linears keep their FP8 metadata as ``_extra_state``: a uint8 tensor (empty without FP8);
- experts (SequentialMLP of TE linears, or TEGroupedMLP) write megatron's expert-axis tensors,
  ``mlp.experts.linear_fc1.weight``, the same keys as the local SequentialMLP.
The analysis of the TE checkpoint must equal that of the local one, number for number.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.transformer.moe.moe_layer import MoELayer

from megatron_cod import platform
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.megatron_adapter import load_megatron_stack
from megatron_cod.analysis.suite import SuiteConfig, run_suite
from megatron_cod.config import ExperimentConfig, ParallelConfig
from megatron_cod.data.tokenizer import load_tokenizer
from megatron_cod.models import build_gpt_model
from megatron_cod.training.checkpoint import (
    META_FILE,
    TRACKER_FILE,
    CheckpointError,
    iteration_dir,
    load_checkpoint,
    save_checkpoint,
)

LAYOUT = {"world_size": 1, "tp": 1, "pp": 1, "ep": 1, "distributed_optimizer": 0}
BASE = {
    "model.num_layers": 2,
    "model.hidden_size": 32,
    "model.num_attention_heads": 4,
    "model.seq_length": 16,
}
MODELS = {
    "dense": {"model.ffn_hidden_size": 64},
    "moe": {"model.num_experts": 4, "model.moe_ffn_hidden_size": 32},
    # layer 1 MoE, layer 2 dense: megatron then keys every layer separately
    "moe-shared-expert": {
        "model.num_experts": 4,
        "model.moe_ffn_hidden_size": 32,
        "model.moe_shared_expert_intermediate_size": 32,
    },
    "peri-ln-moe": {"model.num_experts": 4, "model.moe_ffn_hidden_size": 32, "model.norm_placement": "peri"},
    "moe-every-2nd-layer": {
        "model.num_experts": 4,
        "model.moe_ffn_hidden_size": 32,
        "model.moe_layer_freq": 2,
    },
}


@pytest.fixture(scope="module")
def world():
    platform.initialize(seed=13)
    yield
    platform.teardown()


def _local_checkpoint(root: Path, cfg: ExperimentConfig, tokenizer_path: str) -> torch.nn.Module:
    tokenizer = load_tokenizer(tokenizer_path)
    model = build_gpt_model(cfg.model, tokenizer.vocab_size, ParallelConfig())
    with torch.no_grad():  # trained-looking weights, not an initialisation the load could repeat
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    config_yaml = yaml.safe_dump(cfg.to_dict())
    save_checkpoint(root, 1, [model], None, None, {"train": 1}, config_yaml, LAYOUT, tokenizer=tokenizer)
    return model


def _te_sharded_state(model: torch.nn.Module) -> tuple[dict, int]:
    """The model's sharded state dict with TE's keys; also how many keys differ from the local spec's."""
    state = model.sharded_state_dict()
    moe_layers = {i for i, layer in enumerate(model.decoder.layers) if isinstance(layer.mlp, MoELayer)}
    renamed = 0
    for name, value in state.items():
        parts = name.split(".")
        if name.endswith("pre_mlp_layernorm.weight") and int(parts[2]) in moe_layers:
            assert isinstance(value, ShardedTensor) and "mlp.linear_fc1.layer_norm_weight" in value.key
            value.key = value.key.replace("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight")
            renamed += 1
        elif isinstance(value, ShardedObject) and name.endswith("._extra_state"):
            value.data = torch.empty(0, dtype=torch.uint8)
    return state, renamed


def _te_checkpoint(local: Path, te: Path, model: torch.nn.Module, cfg: ExperimentConfig) -> int:
    """A --save root like ``local`` whose iteration 1 holds TE-spec keys and a TE config."""
    shards = te / "shards"
    shards.mkdir(parents=True)
    state, renamed = _te_sharded_state(model)
    dist_checkpointing.save({"model": state, "iteration": 1, "consumed_samples": {"train": 1}}, str(shards))
    source = iteration_dir(local, 1)
    shutil.copytree(source / "tokenizer", shards / "tokenizer")
    shutil.copy(source / META_FILE, shards / META_FILE)
    te_cfg = cfg.with_overrides({"model.transformer_impl": "transformer_engine"})
    (shards / "config.yaml").write_text(yaml.safe_dump(te_cfg.to_dict()))
    shards.rename(iteration_dir(te, 1))
    (te / TRACKER_FILE).write_text("1\n")
    return renamed


@pytest.mark.parametrize("kind", MODELS)
def test_a_te_checkpoint_analyses_like_its_local_twin(world, tmp_path, builtin_dataset, kind):
    cfg = ExperimentConfig().with_overrides({**BASE, **MODELS[kind]})
    local, te = tmp_path / "local", tmp_path / "te"
    model = _local_checkpoint(local, cfg, builtin_dataset.tokenizer_path)
    renamed = _te_checkpoint(local, te, model, cfg)
    assert renamed == sum(isinstance(layer.mlp, MoELayer) for layer in model.decoder.layers)
    if renamed:  # the layouts differ: a local-spec model does not read the TE keys as they are
        plain = build_gpt_model(cfg.model, load_tokenizer(builtin_dataset.tokenizer_path).vocab_size)
        with pytest.raises(CheckpointError, match="cannot load the checkpoint"):
            load_checkpoint(te, [plain], None, None, LAYOUT, load_optim=False, load_rng=False)

    te_stack, _, _ = load_megatron_stack(te)
    local_stack, _, _ = load_megatron_stack(local)
    saved = dict(model.named_parameters())
    for name, p in te_stack.model.named_parameters():
        assert torch.equal(p, saved[name].float()), name
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(1))
    suite = SuiteConfig(metrics=("usefulness", "causal", "logit-lens", "variance"))
    te_metrics = run_suite(EvalSet(te_stack, ids, batch_size=2), suite).global_metrics()
    local_metrics = run_suite(EvalSet(local_stack, ids, batch_size=2), suite).global_metrics()
    assert te_metrics == local_metrics and len(te_metrics) > 3
