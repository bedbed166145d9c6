"""One training step and one evaluation pass through megatron's pipeline schedules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_cod.platform import device


def _to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dev = device()
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Token-summed loss plus its token count (megatron's 3-tuple convention)."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.float().view(-1)
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    reported = torch.stack([loss_sum.detach().clone(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": reported}


def forward_step(data_iterator: Iterator[dict], model: torch.nn.Module):
    batch = _to_device(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


@dataclass
class StepResult:
    loss: float | None
    tokens: int
    grad_norm: float | None
    lr: float
    skipped: bool


def run_schedule(
    stream,
    model: list[torch.nn.Module],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool,
) -> list[dict]:
    """One global batch through megatron's schedule (no pipelining, 1F1B, ... per parallel_state)."""
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=stream.next_global_batch(),
        model=model,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def reduce_lm_loss(losses_reduced: list[dict]) -> torch.Tensor:
    """[sum, count] over micro-batches and data-parallel ranks (valid on the last pipeline stage)."""
    total = torch.zeros(2, device=device())
    for entry in losses_reduced:
        total += entry["lm loss"].to(total.device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        torch.distributed.all_reduce(total, group=ps.get_data_parallel_group())
    return total


def train_step(
    stream,
    model: list[Any],
    optimizer,
    scheduler,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    after_backward: Callable[[], None] | None = None,
    skip_update: Callable[[torch.Tensor], bool] | None = None,
) -> StepResult:
    """One optimizer step. ``skip_update(loss_total)`` (the reduced [loss sum, token count]) runs
    after the backward pass; True drops this update, like megatron's found-inf path."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses_reduced = run_schedule(
        stream, model, num_microbatches, seq_length, micro_batch_size, forward_only=False
    )
    if after_backward is not None:
        after_backward()
    total = reduce_lm_loss(losses_reduced)
    if skip_update is not None and skip_update(total):
        update_ok, grad_norm = False, None
    else:
        update_ok, grad_norm, _ = optimizer.step()
    if update_ok:
        scheduler.step(increment=1)
    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    return StepResult(
        loss=(total[0] / total[1].clamp_min(1)).item() if last else None,
        tokens=stream.global_batch_size * seq_length,
        grad_norm=float(grad_norm) if grad_norm is not None else None,
        lr=optimizer.param_groups[0]["lr"],
        skipped=not update_ok,
    )


@torch.no_grad()
def evaluate(
    stream,
    model: list[torch.nn.Module],
    eval_iters: int,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
) -> float | None:
    """Mean token loss over eval_iters global batches (None off the last pipeline stage)."""
    for chunk in model:
        chunk.eval()
    total = torch.zeros(2, device=device())
    try:
        for _ in range(eval_iters):
            total += reduce_lm_loss(
                run_schedule(stream, model, num_microbatches, seq_length, micro_batch_size, forward_only=True)
            )
    finally:
        for chunk in model:
            chunk.train()
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return (total[0] / total[1].clamp_min(1)).item()


def num_microbatches(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    return global_batch_size // (micro_batch_size * dp_size)


__all__ = [
    "StepResult",
    "evaluate",
    "forward_step",
    "loss_func",
    "num_microbatches",
    "run_schedule",
    "train_step",
]
