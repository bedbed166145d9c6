"""Throughput of each step: tokens/s, samples/s, model TFLOP/s per device and MFU.

TFLOP/s per device = model FLOPs of the step's global batch (``training.flops``) / step time / world
size. MFU divides it by the device's dense peak: ``--peak-tflops`` when given, else the GPU table for
the run's matmul dtype; on CPU, or on a GPU not in the table, MFU is left out rather than guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from megatron_cod.training.callbacks.base import Callback, StepEnd
from megatron_cod.training.flops import matmul_dtype, peak_tflops, training_flops_per_token

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


def device_peak_tflops(cfg: Any) -> float | None:
    """--peak-tflops, else this process's GPU from the table (None on CPU or an unknown GPU)."""
    if cfg.logging.peak_tflops is not None:
        return float(cfg.logging.peak_tflops)
    if not torch.cuda.is_available():
        return None
    dtype = matmul_dtype(cfg.model.bf16, torch.backends.cuda.matmul.allow_tf32)
    return peak_tflops(torch.cuda.get_device_name(), dtype)


class ThroughputCallback(Callback):
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.flops_per_token: float | None = None
        self.world_size = 1
        self.peak: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        from megatron_cod.training.model_setup import unwrap_gpt

        # the LM head as built: megatron pads the vocabulary per TP rank
        gpt: Any = unwrap_gpt(trainer.model[0])
        vocab = int(gpt.vocab_size)
        self.flops_per_token = training_flops_per_token(self.cfg.model, vocab)
        self.world_size = trainer.ctx.world_size
        self.peak = device_peak_tflops(self.cfg)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if self.flops_per_token is None or step.elapsed_s <= 0:
            return
        tflops = self.flops_per_token * step.tokens / step.elapsed_s / self.world_size / 1e12
        step.metrics["train/tokens_per_s"] = step.tokens / step.elapsed_s
        step.metrics["train/samples_per_s"] = step.samples / step.elapsed_s
        step.metrics["train/tflops_per_device"] = tflops
        if self.peak is not None:
            step.metrics["train/mfu"] = tflops / self.peak
