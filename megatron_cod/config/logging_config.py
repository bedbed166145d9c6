"""Logging section: run-directory root and experiment-tracking sinks (MLflow, W&B, JSONL journal)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import POSITIVE, option, validate_fields


@dataclass(frozen=True)
class LoggingConfig:
    output_dir: str = option("runs", help="root directory for run directories")
    mlflow: bool = option(True, help="log to MLflow")
    mlflow_experiment: str = option("megatron_cod", help="MLflow experiment name")
    mlflow_run_name: str | None = option(None, help="MLflow run name (None: the run directory name)")
    mlflow_tracking_uri: str | None = option(
        None, help="MLflow store (MLFLOW_TRACKING_URI wins; None: sqlite ./mlflow.db)"
    )
    wandb_project: str | None = option(None, help="W&B project (None: no W&B logging)")
    wandb_mode: str = option("offline", help="W&B mode", choices=("online", "offline", "disabled"))
    journal: bool = option(True, help="write <run_dir>/metrics.jsonl")
    tracker_queue_size: int = option(
        10000,
        help="tracker calls buffered for the background worker before the oldest are dropped "
        "(the journal keeps everything; cod-sync replays it)",
        bound=POSITIVE,
    )
    tracker_timeout: float = option(
        10.0,
        help="seconds an MLflow/W&B request may take before the tracker is treated as lost",
        bound=POSITIVE,
    )
    tracker_drain_timeout: float = option(
        30.0, help="seconds the end of training waits for buffered tracker calls", bound=POSITIVE
    )
    peak_tflops: float | None = option(
        None,
        help="peak dense TFLOP/s of one device for MFU (None: from the GPU table; no MFU on CPU)",
        bound=POSITIVE,
    )
    run_tags: list[str] = option(
        help="extra MLflow/W&B run tags as KEY=VALUE (cod-sweep sets its member and seed this way)",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in ("output_dir", "mlflow_experiment"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name.replace('_', '-')} must not be empty")
        parse_run_tags(self.run_tags)


def parse_run_tags(items: list[str]) -> dict[str, str]:
    """{"k": "v"} from ["k=v", ...]; a ConfigError for an item without '=' or without a key."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"run-tags must be KEY=VALUE, got {item!r}")
        tags[key.strip()] = value
    return tags
