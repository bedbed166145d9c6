"""The Trainer's callbacks and their order.

Order matters twice: callbacks that run collectives (marked *) must meet their peers at the same
point on every rank, and callbacks that read what others decided come after them.

1. TelemetryCallback*    depth statistics (hooks; all-reduce at end_step) -> step.metrics
2. ThroughputCallback    tokens/s, samples/s, TFLOP/s per device, MFU -> step.metrics
3. ScheduleCallback      asks for evaluation / save / stop per the intervals
4. ExitSignalCallback*   SIGTERM on any rank -> save and stop (one all-reduce per step)
5. FaultInjectionCallback  only with --inject-fault (tests): NaN, SIGKILL mid-save, SIGTERM
6. NanGuardCallback*     non-finite loss/gradients -> stop or skip the update; no non-finite save
   (callbacks passed to ``pretrain(callbacks=...)`` go here: they see the step's metrics and the
   schedule's decisions, and what they add to step.metrics is logged and printed)
7. ConsoleCallback       progress lines (silent off the logging rank)
8. DepthPlotsCallback    refreshes the depth plots when evaluating or stopping
9. TrackingCallback      logs step.metrics as one batch, evaluation results, checkpoint tags
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from megatron_cod.training.callbacks.base import Callback, Control, StepEnd
from megatron_cod.training.callbacks.console import ConsoleCallback
from megatron_cod.training.callbacks.exit_signal import SIGTERM_STOP, ExitSignalCallback
from megatron_cod.training.callbacks.faults import FaultInjectionCallback
from megatron_cod.training.callbacks.nan_guard import NanGuardCallback
from megatron_cod.training.callbacks.plots import DepthPlotsCallback
from megatron_cod.training.callbacks.schedule import ScheduleCallback
from megatron_cod.training.callbacks.telemetry import TelemetryCallback
from megatron_cod.training.callbacks.throughput import ThroughputCallback
from megatron_cod.training.callbacks.tracking import TrackingCallback
from megatron_cod.training.console import ConsoleLog


def default_callbacks(
    cfg: Any, model: list[Any], tracker: Any, console: ConsoleLog, extra: Sequence[Callback] = ()
) -> list[Callback]:
    """The callbacks of a cod-train run, in the order documented above, with ``extra`` in its place."""
    callbacks: list[Callback] = [TelemetryCallback(model, cfg.telemetry), ThroughputCallback(cfg)]
    callbacks.append(ScheduleCallback(cfg))
    if cfg.train.exit_signal_handler:
        callbacks.append(ExitSignalCallback())
    if cfg.train.inject_fault:
        callbacks.append(FaultInjectionCallback(cfg.train.inject_fault))
    callbacks.append(NanGuardCallback(cfg))
    callbacks += list(extra)
    callbacks += [ConsoleCallback(cfg, console), DepthPlotsCallback(cfg, tracker), TrackingCallback(tracker)]
    return callbacks


__all__ = [
    "SIGTERM_STOP",
    "Callback",
    "ConsoleCallback",
    "Control",
    "DepthPlotsCallback",
    "ExitSignalCallback",
    "FaultInjectionCallback",
    "NanGuardCallback",
    "ScheduleCallback",
    "StepEnd",
    "TelemetryCallback",
    "ThroughputCallback",
    "TrackingCallback",
    "default_callbacks",
]
