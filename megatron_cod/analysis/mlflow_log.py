"""An analysis in MLflow: a run of kind analysis (tracking.open_tool_run), nested under the training
run when that run is in the store, else a run of its own in ``--mlflow-experiment``.

The run opens before the work starts, so an analysis that fails or is stopped leaves a FAILED or
KILLED run. Scores go in as metrics (per-layer curves with step = layer) with the sequences each metric used
(``samples/<metric>``), the arguments, model, data and the standard-error targets each metric was held
to (``target_se.<metric>.<score>``) as params and the whole report directory as artifacts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from megatron_cod.analysis.suite import SuiteResults
from megatron_cod.tracking.tool_run import ToolRun


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested dicts -> {"a.b.c": str(value)} in ``out``; returns ``out``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)
    return out


def log_report(run: ToolRun, output_dir: Path, results: SuiteResults, params: dict[str, Any]) -> None:
    """Scores (non-finite ones left out), timings, ``params`` (flattened) and the report directory."""
    run.log_params(flatten("", {**params, "target_se": results.targets}, {}))
    scalars = {k: v for k, v in results.global_metrics().items() if math.isfinite(v)}
    run.log_metrics(
        {
            **scalars,
            **{f"seconds/{k}": v for k, v in results.seconds.items()},
            **{f"samples/{k}": float(n) for k, n in results.samples.items()},
        },
        step=0,
    )
    curves = results.layer_curves()
    for layer in range(max((len(values) for values in curves.values()), default=0)):
        at_layer = {
            name: values[layer]
            for name, values in curves.items()
            if layer < len(values) and math.isfinite(values[layer])
        }
        if at_layer:
            run.log_metrics(at_layer, step=layer)
    run.log_artifact(output_dir)
