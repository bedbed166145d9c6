"""Isolation for tests that build MoE models of different depths in one process."""

from __future__ import annotations

import pytest
from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker


@pytest.fixture(autouse=True)
def fresh_moe_tracker():
    """megatron's per-layer aux-loss tracker is a process-wide dict whose tensors are sized by the
    first MoE model that trains; a deeper model later indexes past their end. Start each test empty."""
    get_moe_layer_wise_logging_tracker().clear()
    yield
    get_moe_layer_wise_logging_tracker().clear()
