"""SIGTERM handling of tracked runs, without a tracking backend."""

import os
import signal
import threading
import time

import pytest

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import RunTerminated, Tracker, sigterm_raises, tracked_run


def test_sigterm_raises_restores_a_custom_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(RunTerminated) as info:
            with sigterm_raises():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
        assert info.value.signum == signal.SIGTERM and calls == []
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_terminated_is_not_caught_by_except_exception():
    assert not issubclass(RunTerminated, Exception)


def test_sigterm_handler_is_only_installed_in_the_main_thread():
    seen = []

    def worker():
        with sigterm_raises():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


@pytest.mark.parametrize(("code", "status"), [(0, "FINISHED"), (None, "FINISHED"), (3, "FAILED")])
def test_system_exit_status_follows_the_exit_code(tmp_path, code, status):
    tracker = Tracker.start(LoggingConfig(mlflow=False, journal=False), tmp_path, params={})
    with pytest.raises(SystemExit):
        with tracked_run(tracker):
            raise SystemExit(code)
    assert tracker.status == status
