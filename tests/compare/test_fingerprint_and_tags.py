"""Config fingerprint, run tags and the prunable-fraction score that comparisons read."""

from __future__ import annotations

import pytest

from megatron_cod.analysis.similarity import PruneStep, prunable_fraction
from megatron_cod.config import ConfigError, ExperimentConfig, LoggingConfig
from megatron_cod.config.fingerprint import config_hash
from megatron_cod.config.logging_config import parse_run_tags


def test_hash_ignores_bookkeeping_but_not_the_experiment():
    base = ExperimentConfig()
    moved = base.with_overrides({"logging.output_dir": "elsewhere", "checkpoint.save": "/tmp/x",
                                 "logging.run_tags": ["a=b"]})
    assert config_hash(base.to_flat_dict()) == config_hash(moved.to_flat_dict())
    for key, value in {"model.num_layers": 3, "train.seed": 7, "optim.weight_decay": 0.3}.items():
        assert config_hash(base.with_overrides({key: value}).to_flat_dict()) != config_hash(base.to_flat_dict())


def test_run_tags_parse_and_refuse():
    assert parse_run_tags(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        LoggingConfig(run_tags=["novalue"])


def test_prunable_fraction_stops_at_first_step_over_tolerance():
    curve = [PruneStep([], 2.0), PruneStep([3], 2.05), PruneStep([3, 1], 2.09),
             PruneStep([3, 1, 0], 2.5), PruneStep([3, 1, 0, 2], 2.08)]
    # 2.0 * 1.05 = 2.1: two removals stay within it, the third does not, a later recovery does not count
    assert prunable_fraction(curve, 4) == 0.5
    assert prunable_fraction(curve[:1], 4) == 0.0
