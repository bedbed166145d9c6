"""Tracking as a callback: one log call per step with every callback's metrics, eval and checkpoint tags.

Listed after the callbacks that add metrics. The run's end status is set by whoever opened the
tracker (``pretrain``), which also covers failures before the loop starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_cod.tracking import tags
from megatron_cod.training.callbacks.base import Callback, StepEnd

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class TrackingCallback(Callback):
    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        self.tracker.log_metrics(step.metrics, step=step.iteration)

    def on_evaluate(self, trainer: Trainer, iteration: int, loss: float | None) -> None:
        if loss is not None:
            ppl = math.exp(min(loss, 50.0))
            self.tracker.log_metrics({"valid/lm_loss": loss, "valid/ppl": ppl}, step=iteration)

    def on_save(self, trainer: Trainer, iteration: int, path: Path) -> None:
        self.tracker.set_tags(
            {"checkpoint.latest": str(path.resolve()), "checkpoint.iteration": str(iteration)}
        )

    def on_train_end(self, trainer: Trainer) -> None:
        # FINISHED alone does not say the schedule completed: --exit-interval also ends cleanly
        self.tracker.set_tags({tags.ITERATION: str(trainer.iteration)})
