"""Per-run output directory (journal, plots) under --output-dir."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any


def make_run_dir(cfg: Any) -> Path:
    """A fresh directory named after the run; never reuses one that exists."""
    name = cfg.logging.mlflow_run_name or datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    root = Path(cfg.logging.output_dir)
    candidate, n = root / name, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate
