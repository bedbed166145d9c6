"""Run lm-eval (``lm_eval.simple_evaluate``, model ``hf``) on an HF directory; tabulate the results.

Local tasks are the YAMLs in ``tasks/`` with their data file filled in; any other name is passed to
lm-eval as is (a standard task, for machines that have its dataset).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

LOCAL_TASKS = ("cod_cloze", "cod_next_sentence")
TASK_DIR = Path(__file__).parent / "tasks"


def local_task_config(name: str, data_file: Path) -> dict[str, Any]:
    config = yaml.safe_load((TASK_DIR / f"{name}.yaml").read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(data_file)
    return config


def run_lm_eval(hf_dir: Path, tasks: list[str | dict], limit: int | None, batch_size: int) -> dict[str, Any]:
    import lm_eval
    import torch

    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "dtype": "float32"},
        tasks=tasks,
        limit=limit,
        batch_size=batch_size,
        device="cuda" if torch.cuda.is_available() else "cpu",
        log_samples=False,
    )


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """{"eval/<task>/<metric>": value} from lm-eval's results (filter "none" dropped from the name)."""
    out: dict[str, float] = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt == "none" else f"{metric}_{filt}"
            if math.isfinite(float(value)):
                out[f"eval/{task}/{name}"] = float(value)
    return out


def markdown_table(metrics: dict[str, float], sample_counts: dict[str, int]) -> str:
    lines = ["| task | metric | value | ± stderr | items |", "|---|---|---:|---:|---:|"]
    for key, value in metrics.items():
        _, task, metric = key.split("/", 2)
        if metric.endswith("_stderr"):
            continue
        stderr = metrics.get(f"eval/{task}/{metric}_stderr")
        err = f"{stderr:.4f}" if stderr is not None else ""
        lines.append(f"| {task} | {metric} | {value:.4f} | {err} | {sample_counts.get(task, '')} |")
    return "\n".join(lines) + "\n"
