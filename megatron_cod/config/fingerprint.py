"""A config's identity for "is this the same experiment?": a hash over what changes the result.

Where a run writes its outputs (logging, checkpoint paths) and how it is tracked do not change what
it computes, so they are left out: a sweep member re-run into another directory has the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Dotted keys (or whole sections, ending in ".") that never change what a run computes.
BOOKKEEPING_KEYS: tuple[str, ...] = (
    "logging.",
    "checkpoint.save",
    "checkpoint.load",
    "checkpoint.save_interval",
    "checkpoint.load_optim",
    "checkpoint.load_rng",
    "train.exit_interval",
    "train.exit_signal_handler",
    "train.log_interval",
)


def is_bookkeeping(key: str) -> bool:
    return any(
        key.startswith(prefix) if prefix.endswith(".") else key == prefix for prefix in BOOKKEEPING_KEYS
    )


def config_hash(flat: Mapping[str, Any]) -> str:
    """Hex sha256 (16 characters) of a flat {"section.key": value} config without bookkeeping keys."""
    payload = {key: str(value) for key, value in sorted(flat.items()) if not is_bookkeeping(key)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
