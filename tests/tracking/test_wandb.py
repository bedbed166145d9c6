"""W&B is optional: without the package a W&B run fails early with one clear line."""

import importlib.util

import pytest

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking import JOURNAL_NAME, Tracker, TrackingError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")


def test_missing_wandb_is_a_one_line_error(tmp_path):
    cfg = LoggingConfig(mlflow=False, wandb_project="proj", wandb_mode="offline")
    with pytest.raises(TrackingError) as info:
        Tracker.start(cfg, tmp_path, params={})
    message = str(info.value)
    assert "\n" not in message and "wandb" in message and "pip install" in message
    assert not (tmp_path / JOURNAL_NAME).exists()  # nothing was started


def test_disabled_wandb_needs_no_package(tmp_path):
    cfg = LoggingConfig(mlflow=False, wandb_project="proj", wandb_mode="disabled")
    tracker = Tracker.start(cfg, tmp_path, params={})
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.finish()
    assert (tmp_path / JOURNAL_NAME).read_text().count("\n") == 1
