"""Training runs from their run directories, with no tracker: config.yaml for the params,
metrics.jsonl for the metric histories, status.json for the status, and the newest depth analysis
found under <run dir>/analysis/ (its results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from megatron_cod.compare.errors import CompareError
from megatron_cod.compare.records import AnalysisRecord, RunRecord, is_needed_key
from megatron_cod.config import ConfigError, ExperimentConfig
from megatron_cod.tracking import tags
from megatron_cod.tracking.journal import read_metrics, read_status

CONFIG_NAME = "config.yaml"
ANALYSIS_DIR = "analysis"


def _config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CompareError(f"--run-dirs {run_dir}: no {CONFIG_NAME} (not a megatron_cod run directory)")
    try:
        return ExperimentConfig.from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))
    except (ConfigError, yaml.YAMLError) as exc:
        raise CompareError(f"--run-dirs {path}: {' '.join(str(exc).split())}") from None


def _metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    by_key: dict[str, dict[int, float]] = {}
    try:
        records = read_metrics(run_dir)
    except ValueError as exc:
        raise CompareError(f"--run-dirs {exc}") from None
    for record in records:
        for key, value in record["metrics"].items():
            if is_needed_key(key):
                by_key.setdefault(key, {})[record["step"]] = float(value)
    return {key: sorted(steps.items()) for key, steps in by_key.items()}


def _analysis(run_dir: Path) -> AnalysisRecord | None:
    found = sorted((run_dir / ANALYSIS_DIR).glob("**/results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    payload = json.loads(found[-1].read_text())
    scores = {k: v for k, v in payload.get("global", {}).items() if v is not None}
    curves = {
        k: [float("nan") if v is None else v for v in values]
        for k, values in payload.get("layer_curves", {}).items()
        if k.startswith("layer/")
    }
    return AnalysisRecord(str(found[-1].parent), scores, curves)


def load_run_dir(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"--run-dirs {run_dir}: no such directory")
    cfg = _config(run_dir)
    flat = cfg.to_flat_dict()
    run_tags = {tags.RUN_DIR: str(run_dir.resolve()), **tags.training_run_tags(cfg)}
    return RunRecord(
        run_id=str(run_dir),
        name=run_dir.name,
        status=read_status(run_dir),
        params={key: str(value) for key, value in flat.items()},
        tags=run_tags,
        metrics=_metrics(run_dir),
        start_time=(run_dir / CONFIG_NAME).stat().st_mtime,
        analysis=_analysis(run_dir),
    )


def load_run_dirs(run_dirs: list[str]) -> list[RunRecord]:
    return sorted((load_run_dir(d) for d in run_dirs), key=lambda r: r.start_time)
