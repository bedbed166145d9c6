"""Wrap a GPTModel for training: bf16 Float16Module, megatron DDP, and the schedule hooks."""

from __future__ import annotations

from typing import Any, cast

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.transformer.module import Float16Module

from megatron_cod.models import build_gpt_model


def build_training_model(cfg: Any, vocab_size: int) -> list[torch.nn.Module]:
    """This rank's model chunk wrapped in megatron DDP (a list, as megatron's schedules expect)."""
    model = build_gpt_model(cfg.model, vocab_size, cfg.parallel)
    config = model.config
    if cfg.model.bf16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    wrapped = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    wrapped.broadcast_params()
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = wrapped.no_sync
    return [wrapped]


def unwrap_gpt(chunk: torch.nn.Module) -> Any:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = cast(torch.nn.Module, chunk.module)
    return chunk
