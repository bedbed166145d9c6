"""--on-nan: watch loss and gradients every step; stop or skip the update, and never save non-finite weights."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from megatron_cod.training.callbacks.base import Callback, StepEnd
from megatron_cod.training.nonfinite import (
    NonFiniteError,
    locate_nonfinite,
    parameters_are_finite,
    step_is_finite,
)

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class NanGuardCallback(Callback):
    """Collective: one scalar all-reduce per step (and a diagnostic re-run of a bad step) on every rank.

    The check runs before the optimizer step, so a bad update is never applied: ``stop`` raises
    NonFiniteError naming the step and the first non-finite layer (the run ends FAILED, exit 1, and the
    newest checkpoint stays the last good one); ``skip`` drops the update, logs it, and stops once more
    than --max-skipped-steps updates were dropped.
    """

    def __init__(self, cfg: Any) -> None:
        self.mode = cfg.train.on_nan
        self.max_skipped = cfg.train.max_skipped_steps
        self.skipped: list[int] = []
        self._consumed_before = 0

    def on_step_start(self, trainer: Trainer, iteration: int) -> None:
        # where this step's batch starts, for the diagnostic re-run
        self._consumed_before = trainer.consumed["train"]

    def before_update(self, trainer: Trainer, iteration: int, loss_total: torch.Tensor) -> None:
        if step_is_finite(trainer.model, loss_total):
            return
        where = locate_nonfinite(trainer, trainer.stream("train", self._consumed_before))
        message = f"non-finite loss or gradients at iteration {iteration}: {where}"
        if self.mode == "stop":
            raise NonFiniteError(f"{message} (--on-nan stop)")
        self.skipped.append(iteration)
        if len(self.skipped) > self.max_skipped:
            raise NonFiniteError(
                f"{message}; {len(self.skipped)} updates skipped, more than --max-skipped-steps {self.max_skipped}"
            )
        trainer.control.skip_update = True
        print(f"[megatron_cod] warning: skipped the update of {message}", file=sys.stderr, flush=True)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if self.mode == "skip":
            step.metrics["train/skipped_updates"] = float(len(self.skipped))
        if trainer.control.save and not parameters_are_finite(trainer.model):
            raise NonFiniteError(f"non-finite parameters after iteration {step.iteration}: not saving them")
