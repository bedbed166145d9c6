"""The Trainer's callback interface: what a callback sees and when it is called.

Every callback runs on every rank, in the order the Trainer lists them (documented in
``megatron_cod.training.callbacks.default_callbacks``). Callbacks that run collectives (telemetry's
all-reduces, the exit-signal vote, the NaN guard's agreement) therefore meet their peers at the same
point on every rank. Rank-specific behaviour comes from what the Trainer hands out (a no-op tracker
and a silent console off the logging rank), not from ``if rank == 0`` branches in callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from megatron_cod.training.step import StepResult
    from megatron_cod.training.trainer import Trainer


@dataclass
class StepEnd:
    """One finished optimizer step as callbacks see it.

    ``metrics`` starts with the loop's own numbers (loss, lr, grad norm, step time) and each
    callback may add to it (telemetry adds depth statistics, throughput adds tokens/s and MFU);
    the tracking callback, listed after them, logs the dict as one batch.
    """

    iteration: int
    result: StepResult
    elapsed_s: float
    tokens: int
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Control:
    """What callbacks ask of the loop after a step; the Trainer resets it before each step."""

    evaluate: bool = False
    save: bool = False
    stop: str | None = None  # the reason, e.g. "--exit-interval 50" or "SIGTERM"
    skip_update: bool = False  # set before the optimizer step (NaN guard's skip mode)

    def reset(self) -> None:
        self.evaluate = self.save = self.skip_update = False
        self.stop = None


class Callback:
    """Base class: every hook is a no-op; override the ones you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After model, optimizer, data and any checkpoint are loaded; before the first step."""

    def on_step_start(self, trainer: Trainer, iteration: int) -> None:
        """Before the forward/backward of ``iteration`` (1-based)."""

    def after_backward(self, trainer: Trainer, iteration: int) -> None:
        """Gradients of ``iteration`` are complete (reduced across data-parallel ranks), before the update."""

    def before_update(self, trainer: Trainer, iteration: int, loss_total: torch.Tensor) -> None:
        """Before the optimizer step; ``loss_total`` is [loss sum, token count] reduced over data-parallel
        ranks (zeros off the last pipeline stage). Set ``trainer.control.skip_update`` to drop the update."""

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        """After the optimizer step; may add to ``step.metrics`` and set ``trainer.control``."""

    def on_evaluate(self, trainer: Trainer, iteration: int, loss: float | None) -> None:
        """After a validation pass (``loss`` is None off the last pipeline stage)."""

    def on_save(self, trainer: Trainer, iteration: int, path: Path) -> None:
        """After a checkpoint at ``iteration`` is complete on disk."""

    def on_train_end(self, trainer: Trainer) -> None:
        """The loop ended normally (schedule done, --exit-interval, or an exit signal after its save)."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """The loop raised ``exc`` (re-raised after every callback saw it)."""

    def state_dict(self) -> dict[str, Any]:
        """Anything to keep in checkpoints (none by default)."""
        return {}
