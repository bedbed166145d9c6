"""Optimizer and LR schedule on megatron's get_megatron_optimizer / OptimizerParamScheduler.

Weight-decay groups are decided by one pure predicate. By default norms, biases and input
embeddings are not decayed; the paper's code decayed everything by mistake
(paper_code_spec.md section 3.8), and --decay-norm-and-bias / --decay-embeddings bring that back.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

EMBEDDING_PARAM_SUFFIXES = ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight")


def is_norm_or_bias(name: str, param: torch.Tensor) -> bool:
    return name.endswith(".bias") or param.dim() == 1


def is_input_embedding(name: str) -> bool:
    return name.endswith(EMBEDDING_PARAM_SUFFIXES)


def skips_weight_decay(
    name: str, param: torch.Tensor, decay_norm_and_bias: bool, decay_embeddings: bool
) -> bool:
    """True when a parameter belongs to the no-decay group."""
    if is_norm_or_bias(name, param):
        return not decay_norm_and_bias
    if is_input_embedding(name):
        return not decay_embeddings
    return False


def weight_decay_overrides(optim_cfg: Any) -> dict:
    """megatron config_overrides putting our no-decay parameters at wd_mult 0."""
    predicate = ParamWithNamePredicate(
        name="cod_no_weight_decay",
        fn=lambda param, name: skips_weight_decay(
            name, param, optim_cfg.decay_norm_and_bias, optim_cfg.decay_embeddings
        ),
    )
    return {ParamKey(with_name_predicate=predicate): {"wd_mult": 0.0}}


def build_optimizer(
    model_chunks: list[torch.nn.Module], optim_cfg: Any, bf16: bool, use_distributed_optimizer: bool
):
    config = OptimizerConfig(
        optimizer=optim_cfg.optimizer,
        lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        weight_decay=optim_cfg.weight_decay,
        adam_beta1=optim_cfg.adam_beta1,
        adam_beta2=optim_cfg.adam_beta2,
        adam_eps=optim_cfg.adam_eps,
        clip_grad=optim_cfg.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, model_chunks, config_overrides=weight_decay_overrides(optim_cfg))


def build_scheduler(optimizer, optim_cfg: Any, train_iters: int) -> OptimizerParamScheduler:
    """Per-iteration schedule: linear warmup from 0, then cosine/linear/constant to min-lr."""
    decay_iters = optim_cfg.lr_decay_iters or train_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        lr_warmup_steps=optim_cfg.lr_warmup_iters,
        lr_decay_steps=max(decay_iters, optim_cfg.lr_warmup_iters + 1),
        lr_decay_style=optim_cfg.lr_decay_style,
        start_wd=optim_cfg.weight_decay,
        end_wd=optim_cfg.weight_decay,
        wd_incr_steps=max(train_iters, 1),
        wd_incr_style="constant",
    )
