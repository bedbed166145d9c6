"""Megatron-style progress lines as a callback (the Trainer hands a silent console to other ranks)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_cod.training.callbacks.base import Callback, StepEnd
from megatron_cod.training.console import ConsoleLog

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class ConsoleCallback(Callback):
    def __init__(self, cfg: Any, console: ConsoleLog) -> None:
        self.train = cfg.train
        self.console = console

    def on_train_start(self, trainer: Trainer) -> None:
        self.console.restart(trainer.iteration)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        t, it = self.train, step.iteration
        if it % t.log_interval and it != t.train_iters:
            return
        self.console.iteration(
            it,
            trainer.consumed["train"],
            step.elapsed_s * 1e3,
            step.result.lr,
            t.global_batch_size,
            step.result.loss,
            step.result.grad_norm,
            step.metrics,
            step.result.skipped,
        )

    def on_evaluate(self, trainer: Trainer, iteration: int, loss: float | None) -> None:
        if loss is not None:
            self.console.evaluation(iteration, loss, math.exp(min(loss, 50.0)))

    def on_save(self, trainer: Trainer, iteration: int, path: Path) -> None:
        self.console.line(f" saved checkpoint at iteration {iteration} to {path}")

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.control.stop:
            self.console.line(f" exiting after iteration {trainer.iteration}: {trainer.control.stop}")
