"""A remote tracking backend behind a background thread, so training never waits on the network.

Calls are queued (bounded) and replayed in order by one worker thread. The backend is opened in
that thread too: an unreachable MLflow server at start costs the training loop nothing. The first
failure marks the backend lost: one warning line, later calls are counted and dropped. Nothing is
lost for good because the run directory's journal holds every call and ``cod-sync`` replays it.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from megatron_cod.tracking.sink import RunStatus, Sink, TrackingError

_STOP = object()


class BackgroundSink:
    """One remote sink (MLflow, W&B) driven by a daemon thread with a bounded queue."""

    def __init__(self, name: str, open_sink: Callable[[], Sink], queue_size: int, run_dir: str) -> None:
        self.name = name
        self.run_dir = run_dir
        self.sink: Sink | None = None
        self.error: str | None = None
        self.open_error: Exception | None = None
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, args=(open_sink,), name=f"cod-tracker-{name}", daemon=True
        )
        self._thread.start()

    # -- called from the training thread ------------------------------------------------------
    def wait_open(self, timeout: float) -> Sink | None:
        """The opened sink, waiting at most ``timeout`` seconds; None if not (yet) open."""
        self._opened.wait(timeout)
        return self.sink

    def submit(self, method: str, *args: Any) -> None:
        """Queue ``sink.<method>(*args)``; never blocks. A full queue or a lost backend drops the call."""
        if self.error is not None:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            self._lose(f"more than {self._queue.maxsize} calls queued (backend too slow)")
            self.dropped += 1

    def close(self, status: RunStatus, timeout: float) -> int:
        """Queue the run's end, wait up to ``timeout`` s for the queue to drain; the calls not delivered."""
        self.submit("finish", status)
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._lose(f"still busy after {timeout:.0f} s at the end of the run")
        return self.undelivered

    @property
    def undelivered(self) -> int:
        return self.dropped + (self._queue.qsize() if self._thread.is_alive() else 0)

    # -- the worker thread --------------------------------------------------------------------
    def _run(self, open_sink: Callable[[], Sink]) -> None:
        try:
            self.sink = open_sink()
        except Exception as exc:
            self.open_error = exc
            # a configuration error the store reports is raised by the caller, not announced here
            self._lose(f"cannot start: {_describe(exc)}", announce=not isinstance(exc, TrackingError))
        finally:
            self._opened.set()
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self.sink is None or self.error is not None:
                    self.dropped += 1
                    continue
                method, args = item
                try:
                    getattr(self.sink, method)(*args)
                except Exception as exc:
                    self.dropped += 1
                    self._lose(f"lost during {method}: {_describe(exc)}")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` s until everything queued so far has been handled."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _lose(self, why: str, announce: bool = True) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = why
        if not announce:
            return
        print(
            f"[megatron_cod] warning: tracker {self.name} {why}; training continues, every metric stays "
            f"in the run directory's journal: replay it with `cod-sync {self.run_dir}`",
            file=sys.stderr,
            flush=True,
        )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"
