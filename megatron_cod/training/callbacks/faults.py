"""--inject-fault KIND@STEP, for tests of the failure paths (like megatron's error-injection flags).

- ``nan``: the output of the middle decoder layer becomes NaN during STEP (forward and any re-run of it);
- ``kill-in-save``: STEP saves a checkpoint, and the process SIGKILLs itself half-way through that save
  (shards written, checkpoint not yet the latest);
- ``sigterm``: the process sends itself SIGTERM at the start of STEP (a preemption).

Every rank injects the fault, as a cluster preemption or a bad batch would hit them all.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import torch

from megatron_cod.config.train import parse_fault
from megatron_cod.training.callbacks.base import Callback, StepEnd
from megatron_cod.training.model_setup import unwrap_gpt

if TYPE_CHECKING:
    from megatron_cod.training.trainer import Trainer


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjectionCallback(Callback):
    """Listed after the schedule (it may force a save) and before the NaN guard."""

    def __init__(self, faults: list[str]) -> None:
        self.faults: dict[str, set[int]] = {}
        for item in faults:
            kind, step = parse_fault(item)
            self.faults.setdefault(kind, set()).add(step)
        self._handles: list[Any] = []

    def on_train_start(self, trainer: Trainer) -> None:
        if "nan" not in self.faults:
            return
        target = trainer.cfg.model.num_layers // 2 + 1
        steps = self.faults["nan"]

        def poison(layer: torch.nn.Module, args: Any, output: Any) -> Any:
            if trainer.iteration + 1 not in steps:
                return output
            if isinstance(output, tuple):
                return (output[0] * float("nan"), *output[1:])
            return output * float("nan")

        for chunk in trainer.model:
            for layer in unwrap_gpt(chunk).decoder.layers:
                if int(layer.layer_number) == target:
                    self._handles.append(layer.register_forward_hook(poison))

    def on_step_start(self, trainer: Trainer, iteration: int) -> None:
        if iteration in self.faults.get("sigterm", ()):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if step.iteration in self.faults.get("kill-in-save", ()) and trainer.cfg.checkpoint.save:
            trainer.control.save = True
            trainer.save_midway = _kill_self

    def on_train_end(self, trainer: Trainer) -> None:
        self._remove()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
