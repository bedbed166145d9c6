"""Ending a tracked run with the right status whatever stops it: success, an error, Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Protocol, TypeVar

from megatron_cod.tracking.sink import RunStatus


class EndableRun(Protocol):
    """What a run needs to be ended: Tracker, NullTracker and tool_run.ToolRun have it."""

    def finish(self, status: RunStatus = "FINISHED", reason: str | None = None) -> None: ...


R = TypeVar("R", bound=EndableRun)


class RunTerminated(BaseException):
    """Raised in the main thread when SIGTERM arrives; a BaseException so `except Exception` cannot swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into RunTerminated inside the block; restore the previous handler after it.

    Signal handlers can only be installed from the main thread; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise RunTerminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        # None means a handler installed outside Python; the default action is the closest restore.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def end_state(exc: BaseException | None) -> tuple[RunStatus, str | None]:
    """The status a run ends with when ``exc`` stopped it (None: it ran to its end), and why it failed."""
    if exc is None:
        return "FINISHED", None
    if isinstance(exc, (KeyboardInterrupt, RunTerminated)):
        return "KILLED", None
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "FINISHED", None
    text = str(exc).strip().splitlines()
    return "FAILED", f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


@contextlib.contextmanager
def tracked_run(tracker: R, *, handle_sigterm: bool = True) -> Iterator[R]:
    """Finish `tracker` (any run) as KILLED (Ctrl-C, SIGTERM), FAILED (any other error, with the reason) or
    FINISHED; re-raise errors.

    handle_sigterm=False leaves SIGTERM to another handler (e.g. megatron's exit-signal handler, which
    saves a checkpoint first); call tracker.finish("KILLED") yourself in that case.
    """
    guard = sigterm_raises() if handle_sigterm else contextlib.nullcontext()
    with guard:
        try:
            yield tracker
        except BaseException as exc:
            tracker.finish(*end_state(exc))
            raise
    tracker.finish("FINISHED")
