"""--exit-signal-handler: on SIGTERM, finish the iteration, save a checkpoint, stop cleanly.

The handler only sets a flag. Ranks agree on stopping with one scalar all-reduce per iteration,
so every rank enters the collective checkpoint save at the same iteration (ranks receive the
signal at different moments).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from megatron_cod.platform import device


class ExitSignalHandler:
    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def any_rank_received(self) -> bool:
        flag = torch.tensor([int(self.received)], device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
