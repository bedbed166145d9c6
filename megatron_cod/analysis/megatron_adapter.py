"""Layer-stack adapter for megatron_cod checkpoints: a megatron GPTModel on one CPU/GPU process.

Checkpoints are torch_dist and reshard on load, so whatever TP / PP / EP a run was saved with, it
is rebuilt here as a single-rank model from the config.yaml saved beside it. Megatron layers take
``[s, b, h]`` plus rotary embeddings; this adapter transposes at its boundary so metrics only see
``[b, s, h]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.errors import AnalysisError


@dataclass(frozen=True)
class MegatronBatchContext:
    rotary_pos_emb: torch.Tensor | None


class MegatronLayerStack(LayerStack):
    """A GPTModel (pre and post process on this rank) in fp32 eval mode, parameters frozen."""

    def __init__(self, model: Any, source: str | None = None, iteration: int | None = None) -> None:
        model.float().eval()
        model.requires_grad_(False)
        self.model = model
        self._layers = model.decoder.layers
        self._source = source
        self._iteration = iteration

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        # the padded vocabulary: training's softmax ran over it too
        return int(self.model.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        cfg = self.model.config
        info.update(
            adapter="megatron",
            source=self._source,
            iteration=self._iteration,
            num_experts=cfg.num_moe_experts,
            num_query_groups=cfg.num_query_groups,
            num_attention_heads=cfg.num_attention_heads,
        )
        return info

    def prepare(self, input_ids: torch.Tensor) -> MegatronBatchContext:
        rope = getattr(self.model, "rotary_pos_emb", None)
        return MegatronBatchContext(rope(input_ids.shape[1]) if rope is not None else None)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = (
            torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        )
        return self.model.embedding(input_ids=input_ids, position_ids=positions).transpose(0, 1).float()

    def layer_forward(self, index: int, h: torch.Tensor, ctx: MegatronBatchContext) -> torch.Tensor:
        out, _ = self._layers[index](
            hidden_states=h.transpose(0, 1).contiguous(),
            attention_mask=None,
            rotary_pos_emb=ctx.rotary_pos_emb,
        )
        return out.transpose(0, 1)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.final_layernorm(h)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        # With tied embeddings the output layer owns no weight: GPTModel passes the embedding's.
        weight = (
            self.model.shared_embedding_or_output_weight()
            if self.model.share_embeddings_and_output_weights
            else None
        )
        logits, _ = self.model.output_layer(h, weight=weight)
        return logits.float()


def read_checkpoint_config(path: str | Path) -> tuple[Path, Any]:
    """(the iteration directory, its training ExperimentConfig) without loading any weights."""
    from megatron_cod.config import ConfigError, ExperimentConfig
    from megatron_cod.training.checkpoint import resolve_checkpoint

    try:
        ckpt_dir = resolve_checkpoint(path)
        return ckpt_dir, ExperimentConfig.from_dict(yaml.safe_load((ckpt_dir / "config.yaml").read_text()))
    except (FileNotFoundError, ConfigError) as exc:
        raise AnalysisError(f"--checkpoint {path}: {exc}") from exc


def load_megatron_stack(path: str | Path) -> tuple[MegatronLayerStack, dict[str, Any], str | None]:
    """(stack, evaluation-data defaults from the training config, the training's MLflow run id)."""
    from megatron_cod import platform
    from megatron_cod.data.tokenizer import load_tokenizer
    from megatron_cod.models import build_gpt_model
    from megatron_cod.training.checkpoint import load_checkpoint, read_checkpoint_meta

    ckpt_dir, cfg = read_checkpoint_config(path)
    meta = read_checkpoint_meta(ckpt_dir)
    single = cfg.with_overrides(
        {
            "parallel.tensor_model_parallel_size": 1,
            "parallel.pipeline_model_parallel_size": 1,
            "parallel.expert_model_parallel_size": 1,
            "parallel.sequence_parallel": False,
            "parallel.use_distributed_optimizer": False,
            "model.recompute_granularity": None,
            "model.recompute_method": None,
            "model.recompute_num_layers": None,
            "model.bf16": False,
            # TE checkpoints load into the local spec (see use_te_checkpoint_keys), so analysis
            # runs on any device, Transformer Engine installed or not.
            "model.transformer_impl": "local",
        }
    )
    if not torch.distributed.is_initialized():
        platform.initialize(seed=cfg.train.seed)
    tokenizer = load_tokenizer(ckpt_dir / "tokenizer")
    model = build_gpt_model(
        single.model, tokenizer.vocab_size, single.parallel, pre_process=True, post_process=True
    )
    if cfg.model.transformer_impl == "transformer_engine":
        use_te_checkpoint_keys(model)
    layout = {"world_size": 1, "tp": 1, "pp": 1, "ep": 1, "distributed_optimizer": 0}
    iteration, _ = load_checkpoint(ckpt_dir, [model], None, None, layout, load_optim=False, load_rng=False)
    return (
        MegatronLayerStack(model, source=str(ckpt_dir), iteration=iteration),
        _data_defaults(cfg, ckpt_dir),
        meta.get("mlflow_run_id"),
    )


def use_te_checkpoint_keys(model: Any) -> None:
    """Make a local-spec GPTModel read the sharded keys the Transformer Engine spec writes.

    megatron's local spec already saves its Pre-LN norms under the names of TE's fused norm+linear
    parameters (``input_layernorm.`` -> ``self_attention.linear_qkv.layer_norm_``,
    ``pre_mlp_layernorm.`` -> ``mlp.linear_fc1.layer_norm_``): TE's layout for attention and dense
    MLPs. A TE MoE layer has no linear_fc1 to fuse its pre-MLP norm into, so the TE spec builds that
    norm as a TENorm of its own, saved as ``pre_mlp_layernorm.weight``: MoE layers here drop the
    second mapping. Everything else has the same keys in both specs (megatron-core 0.16): the
    router, the shared expert, and the experts, whose SequentialMLP with local or TE linears (and
    TEGroupedMLP) write one ``mlp.experts.linear_fc{1,2}.weight`` tensor over the expert axis.
    """
    from megatron.core.transformer.moe.moe_layer import MoELayer

    for layer in model.decoder.layers:
        if isinstance(layer.mlp, MoELayer):
            keys = dict(layer.submodules_config.sharded_state_dict_keys_map)
            keys.pop("pre_mlp_layernorm.", None)
            layer.submodules_config = dataclasses.replace(
                layer.submodules_config, sharded_state_dict_keys_map=keys
            )


def _data_defaults(cfg: Any, ckpt_dir: Path) -> dict[str, Any]:
    """The training data's held-out split at the training sequence length (a blend gives no default
    prefix: pass --data-prefix)."""
    defaults: dict[str, Any] = {"tokenizer": str(ckpt_dir / "tokenizer"), "seq_length": cfg.model.seq_length}
    if cfg.data.data_path:
        paths = list(cfg.data.data_path)
        if len(paths) == 1:
            defaults.update(data_prefix=paths[0], split=cfg.data.split)
        return defaults
    from megatron_cod.data.builtin import ensure_builtin_dataset

    builtin = ensure_builtin_dataset(cfg.data.builtin, show_progress=False)
    defaults.update(data_prefix=builtin.data_prefix, split=builtin.split)
    return defaults
