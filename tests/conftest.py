"""Session-wide fixtures: the built-in corpus (downloaded and cached once per machine)."""

import signal

import pytest


@pytest.fixture(scope="session")
def builtin_dataset():
    from megatron_cod.data.builtin import ensure_builtin_dataset

    return ensure_builtin_dataset(show_progress=False)


_GUARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_AT_START = {s: signal.getsignal(s) for s in _GUARDED_SIGNALS}


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """A test that changes SIGINT/SIGTERM handling in the pytest process must put it back: an ignored
    SIGINT is inherited through exec by every tool a later test starts (it then never sees Ctrl-C)."""
    before = {s: signal.getsignal(s) for s in _GUARDED_SIGNALS}
    leaked = [s.name for s in _GUARDED_SIGNALS if before[s] != _AT_START[s]]
    assert not leaked, f"a fixture left {', '.join(leaked)} handling changed in the pytest process"
    yield
    changed = [s.name for s in _GUARDED_SIGNALS if signal.getsignal(s) != before[s]]
    for s in _GUARDED_SIGNALS:
        signal.signal(s, before[s])
    assert not changed, f"the test left {', '.join(changed)} handling changed in the pytest process"
