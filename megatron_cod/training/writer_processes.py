"""Checkpoint writer processes die with the training process that started them.

megatron's torch_dist save starts helper processes: a multiprocessing Manager (spawned at the first
save, kept for the whole run) that carries the write results, and forked writers that write each save's
shards. A training killed with SIGKILL cannot stop them, and the Manager would live on forever. Here
each of them asks Linux to SIGKILL it when its parent dies (PR_SET_PDEATHSIG): the Manager through its
start-up initializer, a writer through a fork hook active only while a save runs. Bound so, the
Manager also ignores SIGTERM: a preemption that signals the whole process group (Slurm, a
``kill -TERM -PGID``) would otherwise end it before the save that the signal asks for, which then fails
(broken pipe). Linux ties that
signal to the thread that started the child, so this is done only for saves on the main thread (a
Manager bound to a worker thread would die with the thread and break the next save).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing.managers import SyncManager

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_saving_pid: int | None = None  # the saving process, while a save runs (forked children see it too)
_fork_hook_registered = False


def die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the process that started it) dies; exit at
    once when it already has. No-op outside Linux."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # died before the request took effect: this process was re-parented
        os._exit(1)


def _start_manager_server(parent: int) -> None:
    die_with(parent)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends with its parent; SIGINT python ignores


def _after_fork_in_child() -> None:
    if _saving_pid is not None:
        die_with(_saving_pid)


def _bind_megatron_results_queue() -> None:
    """Start the Manager behind megatron's write-results queue ourselves, bound to this process.

    megatron creates it on first use (filesystem_async._get_write_results_queue: a spawn-context
    Manager's Queue) and reuses it; with it already set, megatron uses ours. A megatron version
    without that module global is left as it is.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is not None:
        return
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=_start_manager_server, initargs=(os.getpid(),))
    filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager alive


@contextlib.contextmanager
def writers_die_with_this_process() -> Iterator[None]:
    """Around a megatron save: its helper processes, started now or before, end when this process does."""
    global _saving_pid, _fork_hook_registered
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    _bind_megatron_results_queue()
    _saving_pid = os.getpid()
    try:
        yield
    finally:
        _saving_pid = None
