"""When to evaluate, save and stop: --eval-interval, --save-interval, --exit-interval and the last step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron_cod.training.callbacks.base import Callback, StepEnd

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


class ScheduleCallback(Callback):
    def __init__(self, cfg: Any) -> None:
        self.train = cfg.train
        self.save_dir = cfg.checkpoint.save
        self.save_interval = cfg.checkpoint.save_interval

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        t, it, control = self.train, step.iteration, trainer.control
        last = it == t.train_iters
        if t.exit_interval and it % t.exit_interval == 0 and not last:
            control.stop = f"--exit-interval {t.exit_interval}"
        control.evaluate = bool(t.eval_interval) and (it % t.eval_interval == 0 or last)
        due = bool(self.save_interval) and it % self.save_interval == 0
        control.save = bool(self.save_dir) and (last or due or control.stop is not None)
