"""Finding non-finite values in a step: a cheap per-step check and a diagnostic re-run that names a layer."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from megatron_cod.platform import device
from megatron_cod.training.model_setup import unwrap_gpt
from megatron_cod.training.step import run_schedule


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient and was told (--on-nan) to stop."""


def _agree(flag: bool | float, op: dist.ReduceOp.RedOpType) -> float:
    value = torch.tensor([float(flag)], device=device())
    dist.all_reduce(value, op=op)
    return float(value.item())


def step_is_finite(model: list[torch.nn.Module], loss_total: torch.Tensor) -> bool:
    """Loss and every gradient finite on every rank: one pass over the grad buffers, one scalar all-reduce."""
    bad = ~torch.isfinite(loss_total).all()
    for chunk in model:
        for buffer in getattr(chunk, "buffers", []) + getattr(chunk, "expert_parallel_buffers", []):
            bad = bad | ~torch.isfinite(buffer.grad_data).all()
    return _agree(bool(bad), dist.ReduceOp.MAX) == 0.0


def parameters_are_finite(model: list[torch.nn.Module]) -> bool:
    bad = any(not bool(torch.isfinite(p).all()) for chunk in model for p in chunk.parameters())
    return _agree(bad, dist.ReduceOp.MAX) == 0.0


def _output_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _min_layer(numbers: list[int]) -> int | None:
    found = _agree(min(numbers) if numbers else math.inf, dist.ReduceOp.MIN)
    return None if math.isinf(found) else int(found)


def locate_nonfinite(trainer: Any, stream: Any) -> str:
    """Re-run one step's forward and backward on ``stream`` (the step's batch) with a hook on every
    decoder layer; describe the first layer (global number) whose output, else whose gradients, are
    non-finite. Every rank calls this (it runs the pipeline schedule and two all-reduces)."""
    layers = [layer for chunk in trainer.model for layer in unwrap_gpt(chunk).decoder.layers]
    bad_outputs: list[int] = []

    def check(layer: Any, args: Any, output: Any) -> None:
        if not bool(torch.isfinite(_output_tensor(output)).all()):
            bad_outputs.append(int(layer.layer_number))

    handles = [layer.register_forward_hook(check) for layer in layers]
    try:
        for chunk in trainer.model:
            chunk.zero_grad_buffer()
        t = trainer.cfg.train
        run_schedule(
            stream,
            trainer.model,
            trainer.n_micro,
            trainer.cfg.model.seq_length,
            t.micro_batch_size,
            forward_only=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    bad_grads = [
        int(layer.layer_number)
        for layer in layers
        if any(
            not bool(torch.isfinite(getattr(p, "main_grad", p.grad)).all())
            for p in layer.parameters()
            if getattr(p, "main_grad", p.grad) is not None
        )
    ]
    first_output, first_grad = _min_layer(bad_outputs), _min_layer(bad_grads)
    total = trainer.cfg.model.num_layers
    if first_output is not None:
        return f"first non-finite activations: layer {first_output} of {total}"
    if first_grad is not None:
        return f"first non-finite gradients: layer {first_grad} of {total}"
    return "no layer's activations or gradients are non-finite (the loss itself is)"
