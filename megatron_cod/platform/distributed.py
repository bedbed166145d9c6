"""Process-group set-up: gloo without CUDA, NCCL with it; with or without torchrun."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None, timeout_minutes: int = 30) -> tuple[int, int]:
    """Initialise torch.distributed once; returns (rank, world_size).

    Under torchrun the env:// variables are used; a plain ``python`` process becomes a world of
    one on a free loopback port, so every entry point (tests, tools, notebooks) runs the same code.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        # no environment changes: child processes (torchrun, tests) must not inherit a dead master
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    return dist.get_rank(), dist.get_world_size()


def destroy_process_group(barrier: bool = True) -> None:
    """Tear down; without it about one gloo run in three aborts at interpreter exit.

    After an error the other ranks may never arrive, so the barrier is skipped then.
    """
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
