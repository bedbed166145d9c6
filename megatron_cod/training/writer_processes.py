"""Checkpoint saves start no process that outlives the training, and none that costs a torch import.

megatron's torch_dist save forks writer processes for each save's shards and passes their results
through a queue that megatron would back by a spawned multiprocessing Manager (started at the first
save, kept for the whole run). Our saves are synchronous, so that queue is only ever used inside this
process: a plain thread-safe queue replaces it. No Manager means no extra interpreter per rank that
imports torch to unpickle the results (about 2 s and a few hundred MB at the first save), and nothing a
SIGKILL of the training leaves behind or a process-group SIGTERM (a preemption) ends before the save it
asks for. A forked writer asks Linux to SIGKILL it when the training dies (PR_SET_PDEATHSIG), through a
fork hook active only while a save runs. Linux ties that signal to the thread that forked the child,
so this is done only for saves on the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator

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


def _after_fork_in_child() -> None:
    if _saving_pid is not None:
        die_with(_saving_pid)


def _bind_megatron_results_queue() -> None:
    """Give megatron's write-results queue an in-process queue before its first save.

    megatron creates it on first use (filesystem_async._get_write_results_queue) and reuses it; with
    it already set, megatron uses ours. A megatron version without that module global is left as it is.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is not None:
        return
    filesystem_async._results_queue = queue.Queue()


@contextlib.contextmanager
def writers_die_with_this_process() -> Iterator[None]:
    """Around a megatron synchronous save: its results stay in this process, and the writers it forks
    end when this process does."""
    global _saving_pid, _fork_hook_registered
    _bind_megatron_results_queue()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    _saving_pid = os.getpid()
    try:
        yield
    finally:
        _saving_pid = None
