"""Drive pretrain() in processes forked from the warm server (warm_launch), gloo at world size 1 or 2,
with a recording callback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
import warm_launch
from training_launch import SCHEDULE, TINY_DENSE


class Recorder:
    """Records every hook the Trainer calls, and adds a metric of its own to each step."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, trainer):
        self.events.append(("on_train_start",))

    def on_step_start(self, trainer, iteration):
        self.events.append(("on_step_start", iteration))

    def after_backward(self, trainer, iteration):
        self.events.append(("after_backward", iteration))

    def before_update(self, trainer, iteration, loss_total):
        self.events.append(("before_update", iteration))

    def on_step_end(self, trainer, step):
        self.events.append(("on_step_end", step.iteration))
        step.metrics["custom/iteration_squared"] = float(step.iteration**2)

    def on_evaluate(self, trainer, iteration, loss):
        self.events.append(("on_evaluate", iteration))

    def on_save(self, trainer, iteration, path):
        self.events.append(("on_save", iteration))

    def on_train_end(self, trainer):
        self.events.append(("on_train_end",))
        self.callbacks = [type(c).__name__ for c in trainer.callbacks]
        self.tracker = next(
            type(c.tracker).__name__
            for c in trainer.callbacks
            if hasattr(c, "tracker") and type(c).__name__ == "TrackingCallback"
        )

    def on_exception(self, trainer, exc):
        self.events.append(("on_exception", type(exc).__name__))

    def state_dict(self):
        return {}


def _worker(rank: int, world_size: int, port: int, tmp: str, args: list[str], queue) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from megatron_cod.config import load_config
    from megatron_cod.training.loop import pretrain

    cfg = load_config(
        [*TINY_DENSE, *SCHEDULE, *args, "--output-dir", f"{tmp}/runs", "--mlflow-run-name", "cb"]
    )
    recorder = Recorder()
    outcome = pretrain(cfg, callbacks=[recorder])
    queue.put(
        (
            rank,
            recorder.events,
            recorder.callbacks,
            recorder.tracker,
            str(outcome.run_dir) if outcome.run_dir else None,
        )
    )


def run(tmp: Path, world_size: int, args: list[str]) -> dict[int, tuple]:
    """{rank: (events, callback class names, tracker class name, run_dir)}."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = warm_launch.context().Queue()
    mp.start_processes(
        _worker,
        args=(world_size, port, str(tmp), args, queue),
        nprocs=world_size,
        start_method="forkserver",
        join=True,
    )
    out = {}
    for _ in range(world_size):
        rank, *rest = queue.get(timeout=60)
        out[rank] = tuple(rest)
    return out
