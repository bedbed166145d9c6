"""The comparison as an MLflow run of its own (tracking.open_tool_run): tagged as a comparison, listing
the compared runs, with report.md and the plots as artifacts. The compared runs are left alone unless
asked to carry a tag pointing back at the comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_cod.compare.records import RunRecord
from megatron_cod.tracking import ToolRun, open_tool_run, tags

DEFAULT_EXPERIMENT = "comparisons"
_TAG_LIMIT = 5000


def _experiment(client: Any, runs: list[Any], name: str | None) -> str:
    """``name``, else the compared runs' experiment when they share one, else DEFAULT_EXPERIMENT."""
    shared = {run.info.experiment_id for run in runs}
    if name is None and len(shared) == 1:
        return client.get_experiment(shared.pop()).name
    return name or DEFAULT_EXPERIMENT


def start_comparison_run(
    client: Any,
    uri: str,
    mlflow_runs: list[Any],
    experiment: str | None,
    run_name: str,
    params: dict[str, object],
) -> ToolRun:
    ids = ",".join(run.info.run_id for run in mlflow_runs)
    run = open_tool_run(
        tags.KIND_COMPARISON,
        run_name,
        _experiment(client, mlflow_runs, experiment),
        extra_tags={tags.COMPARED_RUNS: ids if len(ids) <= _TAG_LIMIT else ids[: _TAG_LIMIT - 3] + "..."},
        tracking_uri=uri,
    )
    run.log_params(params)
    return run


def log_comparison(
    client: Any, run: ToolRun, output_dir: Path, records: list[RunRecord], tag_compared: bool
) -> None:
    """The report directory and the list of compared runs as artifacts; optionally tag the compared runs."""
    (output_dir / "compared_runs.json").write_text(
        json.dumps([{"run_id": r.run_id, "name": r.name, "status": r.status} for r in records], indent=2)
    )
    run.log_artifact(output_dir)
    if tag_compared:
        for record in records:
            client.set_tag(record.run_id, tags.COMPARISON_RUN, run.run_id)
