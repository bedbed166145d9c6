"""Depth telemetry as a callback: hooks around each step, one host transfer per collection step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron_cod.telemetry import DepthTelemetry
from megatron_cod.training.callbacks.base import Callback, StepEnd

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class TelemetryCallback(Callback):
    """Collective: end_step all-reduces across ranks, so this runs on every rank at the same point."""

    def __init__(self, model: list[Any], cfg: Any) -> None:
        self.telemetry = DepthTelemetry(model, cfg)

    def on_step_start(self, trainer: Trainer, iteration: int) -> None:
        self.telemetry.begin_step(iteration)

    def after_backward(self, trainer: Trainer, iteration: int) -> None:
        self.telemetry.after_backward(iteration)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        step.metrics.update(self.telemetry.end_step(step.iteration))

    def on_train_end(self, trainer: Trainer) -> None:
        self.telemetry.remove()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.telemetry.remove()
