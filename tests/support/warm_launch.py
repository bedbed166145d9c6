"""Run megatron_cod's ``python -m`` tools in processes forked from a server that has megatron imported.

A fresh interpreter spends about 5.5 s importing megatron-core (it pulls in torch._inductor and
wandb) before a tool does anything; a tiny training then runs in about 1 s. Tests launch dozens of
them, so most of their time went to imports. multiprocessing's forkserver imports the tools once;
each launch forks it and runs the tool's ``__main__`` with its own argv, environment, working
directory, stdout and stderr, as ``python -m`` would, atexit handlers included. What a process gives
stays: its own pid, exit status, signals, and for several ranks a gloo rendezvous through the same
environment variables torchrun sets.

What it does not give: a fresh interpreter start, torchrun's agent (it restarts nothing, forwards no
signal) and a process group of its own. Tests of those start real processes
(``training_launch.train(..., warm=False)``).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path

# what the server imports once: every tool's entry and what it needs before its first step
PRELOAD = [
    "megatron_cod.training.cli",
    "megatron_cod.training.loop",
    "megatron_cod.analysis.cli",
    "megatron_cod.export.cli",
    "megatron_cod.evaluation.cli",
    "megatron_cod.compare.cli",
    "mlflow",
]
# torch's OpenMP pool reads this when libtorch loads (in the server): one thread, as the tests' tools use
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
_started = False


def context() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's forkserver context, its server started (once) with the tools imported."""
    global _started
    ctx = multiprocessing.get_context("forkserver")
    if not _started:
        ctx.set_forkserver_preload(PRELOAD)
        saved = {key: os.environ.get(key) for key in SERVER_ENV}
        os.environ.update(SERVER_ENV)
        try:
            forkserver.ensure_running()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _started = True
    return ctx


def _run_module(module: str, args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked child: become ``python -m module args`` with this environment and output."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = [module, *args]
    # as in a fresh interpreter, the module runs as __main__ without having been imported first (runpy
    # warns otherwise); what it imports is already loaded
    sys.modules.pop(module, None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _stop(processes: list, grace: float) -> None:
    """As torchrun does when a rank fails: SIGTERM the others, SIGKILL what is left after ``grace``."""
    for p in processes:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def run(
    module: str,
    args: list[str],
    *,
    cwd: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    nproc: int = 1,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``python -m module args`` (``torchrun --nproc-per-node nproc`` for several ranks), as
    subprocess.run(..., capture_output=True, text=True) returns it; raises TimeoutExpired likewise.
    Several ranks: exit status 0 when every rank exits 0, else 1, their outputs in rank order."""
    ctx = context()
    base_env = {**os.environ, **SERVER_ENV, **(env or {})}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="warm-") as logs:
        outputs = [(f"{logs}/{rank}.out", f"{logs}/{rank}.err") for rank in range(nproc)]
        processes = []
        for rank, (out, err) in enumerate(outputs):
            rank_env = {**base_env, **(_rank_env(rank, nproc, port) if nproc > 1 else {})}
            process = ctx.Process(target=_run_module, args=(module, args, rank_env, str(cwd), out, err))
            process.start()
            processes.append(process)
        deadline = time.monotonic() + timeout
        timed_out = False
        while any(p.is_alive() for p in processes):
            if time.monotonic() > deadline:
                timed_out = True
                _stop(processes, grace=0)
                break
            if any(p.exitcode not in (None, 0) for p in processes):
                _stop(processes, grace=30)
                break
            multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()], timeout=0.5)
        for p in processes:
            p.join()
        stdout = "".join(Path(out).read_text(errors="replace") for out, _ in outputs)
        stderr = "".join(Path(err).read_text(errors="replace") for _, err in outputs)
    cmd = [sys.executable, "-m", module, *args]
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    codes = [p.exitcode for p in processes]
    code = codes[0] if nproc == 1 else (0 if all(c == 0 for c in codes) else 1)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)
