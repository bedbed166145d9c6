"""The comparison as an MLflow run of its own: tagged as a comparison, listing the compared runs,
with report.md and the plots as artifacts. The compared runs are left alone unless asked to carry a
tag pointing back at the comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_cod.compare.records import RunRecord
from megatron_cod.tracking import tags

DEFAULT_EXPERIMENT = "comparisons"
_TAG_LIMIT = 5000


def _experiment_id(client: Any, runs: list[Any], name: str | None) -> str:
    shared = {run.info.experiment_id for run in runs}
    if name is None and len(shared) == 1:
        return shared.pop()
    name = name or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def start_comparison_run(
    client: Any, mlflow_runs: list[Any], experiment: str | None, run_name: str, params: dict[str, str]
) -> str:
    ids = ",".join(run.info.run_id for run in mlflow_runs)
    run = client.create_run(
        _experiment_id(client, mlflow_runs, experiment),
        run_name=run_name,
        tags={
            tags.KIND: tags.KIND_COMPARISON,
            tags.COMPARED_RUNS: ids if len(ids) <= _TAG_LIMIT else ids[: _TAG_LIMIT - 3] + "...",
        },
    )
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def finish_comparison_run(
    client: Any, run_id: str, output_dir: Path, records: list[RunRecord], tag_compared: bool
) -> None:
    (output_dir / "compared_runs.json").write_text(
        json.dumps([{"run_id": r.run_id, "name": r.name, "status": r.status} for r in records], indent=2)
    )
    client.log_artifacts(run_id, str(output_dir))
    if tag_compared:
        for record in records:
            client.set_tag(record.run_id, tags.COMPARISON_RUN, run_id)
    client.set_terminated(run_id, "FINISHED")
