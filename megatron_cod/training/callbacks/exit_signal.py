"""--exit-signal-handler as a callback: on SIGTERM (any rank) finish the step, save, stop cleanly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_cod.training.callbacks.base import Callback, StepEnd
from megatron_cod.training.exit_signal import ExitSignalHandler

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer

SIGTERM_STOP = "SIGTERM"


class ExitSignalCallback(Callback):
    """Collective: one all-reduce per step so every rank stops (and saves) at the same iteration."""

    def __init__(self) -> None:
        self.handler = ExitSignalHandler()

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if self.handler.any_rank_received():
            trainer.control.stop = SIGTERM_STOP
            trainer.control.save = trainer.cfg.checkpoint.save is not None

    def on_train_end(self, trainer: Trainer) -> None:
        self.handler.restore()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.handler.restore()
