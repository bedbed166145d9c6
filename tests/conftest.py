"""Session-wide fixtures: the built-in corpus (downloaded and cached once per machine)."""

import pytest


@pytest.fixture(scope="session")
def builtin_dataset():
    from megatron_cod.data.builtin import ensure_builtin_dataset

    return ensure_builtin_dataset(show_progress=False)
