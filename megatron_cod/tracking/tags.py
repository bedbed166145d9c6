"""The MLflow tag names megatron_cod sets, in one place, so `cod-compare` and `cod-sweep` find runs by them.

Every run says what produced it (KIND); nested runs (analysis, eval, export) also carry MLflow's
own ``mlflow.parentRunId`` pointing at the training run they belong to.
"""

from __future__ import annotations

from typing import Any

from megatron_cod.config.fingerprint import config_hash
from megatron_cod.config.logging_config import parse_run_tags

KIND = "megatron_cod.kind"
KIND_TRAIN = "train"
KIND_ANALYSIS = "analysis"
KIND_EVAL = "eval"
KIND_EXPORT = "export"
KIND_COMPARISON = "comparison"

PARENT_RUN = "mlflow.parentRunId"
TRAINING_RUN = "megatron_cod.training_run_id"  # the training run of a non-nested run (it is in another store)
FAILURE = "megatron_cod.failure"  # why a FAILED run failed
RUN_DIR = "megatron_cod.run_dir"
CONFIG_HASH = "megatron_cod.config_hash"
SEED = "megatron_cod.seed"
ITERATION = "megatron_cod.iteration"  # the iteration a training run ended at
SWEEP = "megatron_cod.sweep"
SWEEP_MEMBER = "megatron_cod.sweep_member"
COMPARED_RUNS = "megatron_cod.compared_runs"
COMPARISON_RUN = "megatron_cod.comparison_run"


def training_run_tags(cfg: Any, world_size: int | None = None) -> dict[str, str]:
    """A training run's tags; the config's own --run-tags come last and win."""
    out = {KIND: KIND_TRAIN, SEED: str(cfg.train.seed), CONFIG_HASH: config_hash(cfg.to_flat_dict())}
    if world_size is not None:
        out["megatron_cod.world_size"] = str(world_size)
    return {**out, **parse_run_tags(cfg.logging.run_tags)}
