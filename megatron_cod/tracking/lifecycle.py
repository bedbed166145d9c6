"""Ending a tracked run with the right status whatever stops it: success, an error, Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from megatron_cod.tracking.tracker import Tracker


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


@contextlib.contextmanager
def tracked_run(tracker: Tracker, *, handle_sigterm: bool = True) -> Iterator[Tracker]:
    """Finish `tracker` as KILLED (Ctrl-C, SIGTERM), FAILED (any other error) or FINISHED; re-raise errors.

    handle_sigterm=False leaves SIGTERM to another handler (e.g. megatron's exit-signal handler, which
    saves a checkpoint first); call tracker.finish("KILLED") yourself in that case.
    """
    guard = sigterm_raises() if handle_sigterm else contextlib.nullcontext()
    with guard:
        try:
            yield tracker
        except (KeyboardInterrupt, RunTerminated):
            tracker.finish("KILLED")
            raise
        except SystemExit as exc:
            tracker.finish("FINISHED" if exc.code in (None, 0) else "FAILED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
    tracker.finish("FINISHED")
