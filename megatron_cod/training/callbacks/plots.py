"""Depth plots from the telemetry history, refreshed at evaluations and at the end, logged as artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron_cod.telemetry.plots import plot_values, write_depth_plots
from megatron_cod.training.callbacks.base import Callback, StepEnd

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class DepthPlotsCallback(Callback):
    """Listed after telemetry (reads its metrics) and the schedule (reads trainer.control)."""

    def __init__(self, cfg: Any, tracker: Any) -> None:
        self.train = cfg.train
        self.tracker = tracker
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        values = plot_values(step.metrics)
        if values:
            self.history.append((step.iteration, values))
        last = step.iteration == self.train.train_iters
        if self.history and (last or trainer.control.stop or trainer.control.evaluate):
            self._write()

    def _write(self) -> None:
        run_dir = self.tracker.run_dir
        if run_dir is None:  # a rank that does not log
            return
        for png in write_depth_plots(self.history, run_dir / "plots"):
            self.tracker.log_artifact(png, artifact_path="plots")
