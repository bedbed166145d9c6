"""Where each sweep run stands: finished in MLflow with the same config hash (skip), interrupted with a
checkpoint on disk (resume), or not started. One search over the sweep's tag answers for all runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_cod.compare.mlflow_source import all_experiment_ids, nested_runs, open_client, search_runs
from megatron_cod.config import ExperimentConfig
from megatron_cod.config.fingerprint import config_hash
from megatron_cod.sweep.spec import MemberRun
from megatron_cod.tracking import tags
from megatron_cod.tracking.mlflow_sink import sqlite_db_path
from megatron_cod.training.checkpoint import latest_iteration


def run_hash(config: ExperimentConfig) -> str:
    return config_hash(config.to_flat_dict())


def run_directory(root: Path, run: MemberRun) -> Path:
    """<root>/<member>/seed<seed>-<hash8>: a changed config never meets an old checkpoint."""
    return root / run.member.id / f"seed{run.seed}-{run_hash(run.config)[:8]}"


@dataclass(frozen=True)
class RunState:
    finished_run_id: str | None  # a FINISHED MLflow run of this exact config
    run_dir: str | None  # its run directory (tag), for --analyze
    resume_iteration: int | None  # latest checkpoint on disk

    def describe(self) -> str:
        if self.finished_run_id:
            return f"done (run {self.finished_run_id[:8]})"
        if self.resume_iteration is not None:
            return f"resume from iteration {self.resume_iteration}"
        return "to train"


def finished_runs(uri: str, sweep: str) -> dict[tuple[str, str, str], Any]:
    """{(member, seed, config hash): newest FINISHED training run} among the sweep's tagged runs."""
    db = sqlite_db_path(uri)
    if db is not None and not db.is_file():
        return {}
    client = open_client(uri)
    experiments = all_experiment_ids(client, uri)
    runs = (
        search_runs(client, uri, experiments, f"tags.`{tags.SWEEP}` = '{sweep}'", "finding the sweep's runs")
        if experiments
        else []
    )
    out: dict[tuple[str, str, str], Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        t = run.data.tags
        if run.info.status == "FINISHED" and t.get(tags.KIND, tags.KIND_TRAIN) == tags.KIND_TRAIN:
            out[(t.get(tags.SWEEP_MEMBER, ""), t.get(tags.SEED, ""), t.get(tags.CONFIG_HASH, ""))] = run
    return out


def state_of(run: MemberRun, directory: Path, finished: dict[tuple[str, str, str], Any]) -> RunState:
    done = finished.get((run.member.id, str(run.seed), run_hash(run.config)))
    if done is not None and int(done.data.tags.get(tags.ITERATION, "-1")) >= run.config.train.train_iters:
        return RunState(done.info.run_id, done.data.tags.get(tags.RUN_DIR), None)
    return RunState(None, None, latest_iteration(directory / "checkpoints"))


def analyzed(uri: str, training_runs: list[Any]) -> set[str]:
    """Ids of the given training runs that already have a FINISHED nested analysis run."""
    experiments = sorted({run.info.experiment_id for run in training_runs})
    return set(
        nested_runs(
            open_client(uri), uri, experiments, tags.KIND_ANALYSIS, {run.info.run_id for run in training_runs}
        )
    )
