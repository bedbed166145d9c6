"""Megatron-style console progress lines, printed by the logging rank."""

from __future__ import annotations

import datetime
import sys
import time


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

    def iteration(
        self,
        iteration: int,
        consumed: int,
        ms: float,
        lr: float,
        gbs: int,
        loss: float,
        grad_norm: float | None,
        tokens_per_s: float,
        skipped: bool,
    ) -> None:
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        gn = f"{grad_norm:.3f}" if grad_norm is not None else "n/a"
        self.line(
            f" [{now}] iteration {iteration:>7d}/{self.train_iters:>7d} | consumed samples: {consumed:>9d}"
            f" | elapsed time per iteration (ms): {ms:.1f} | learning rate: {lr:.6E}"
            f" | global batch size: {gbs:>4d} | lm loss: {loss:.6E} | grad norm: {gn}"
            f" | tokens/s: {tokens_per_s:.0f}{' | skipped' if skipped else ''} | ETA {self._eta(iteration)}"
        )

    def evaluation(self, iteration: int, loss: float, ppl: float) -> None:
        bar = "-" * 100
        self.line(
            f"{bar}\n validation loss at iteration {iteration} | lm loss value: {loss:.6E}"
            f" | lm loss PPL: {ppl:.6E}\n{bar}"
        )
