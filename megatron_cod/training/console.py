"""Megatron-style console progress lines, printed by the logging rank."""

from __future__ import annotations

import datetime
import sys
import time

# step metrics shown on the progress line when a callback provides them: (key, label, format)
_RATES = (
    ("train/tokens_per_s", "tokens/s", ".0f"),
    ("train/tflops_per_device", "TFLOP/s/device", ".2f"),
    ("train/mfu", "MFU", ".1%"),
)


class ConsoleLog:
    def __init__(self, train_iters: int, start_iteration: int, enabled: bool) -> None:
        self.train_iters = train_iters
        self.start_iteration = start_iteration
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def _eta(self, iteration: int) -> str:
        done = iteration - self.start_iteration
        if done <= 0:
            return "?"
        per_iter = (time.perf_counter() - self.t0) / done
        return str(datetime.timedelta(seconds=int(per_iter * (self.train_iters - iteration))))

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True, file=sys.stdout)

    def restart(self, start_iteration: int) -> None:
        """Measure the ETA from here (after a resume the first iterations were not timed)."""
        self.start_iteration = start_iteration
        self.t0 = time.perf_counter()

    def iteration(
        self,
        iteration: int,
        consumed: int,
        ms: float,
        lr: float,
        gbs: int,
        loss: float | None,
        grad_norm: float | None,
        metrics: dict[str, float],
        skipped: bool,
    ) -> None:
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        gn = f"{grad_norm:.3f}" if grad_norm is not None else "n/a"
        lm = f"{loss:.6E}" if loss is not None else "n/a"
        rates = "".join(f" | {label}: {metrics[key]:{fmt}}" for key, label, fmt in _RATES if key in metrics)
        self.line(
            f" [{now}] iteration {iteration:>7d}/{self.train_iters:>7d} | consumed samples: {consumed:>9d}"
            f" | elapsed time per iteration (ms): {ms:.1f} | learning rate: {lr:.6E}"
            f" | global batch size: {gbs:>4d} | lm loss: {lm} | grad norm: {gn}"
            f"{rates}{' | skipped' if skipped else ''} | ETA {self._eta(iteration)}"
        )

    def evaluation(self, iteration: int, loss: float, ppl: float) -> None:
        bar = "-" * 100
        self.line(
            f"{bar}\n validation loss at iteration {iteration} | lm loss value: {loss:.6E}"
            f" | lm loss PPL: {ppl:.6E}\n{bar}"
        )
