"""Weights & Biases backend; wandb is an optional dependency imported only when a project is set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from megatron_cod.config import LoggingConfig
from megatron_cod.tracking.sink import RunStatus, TrackingError

WANDB_TAG_MAX = 64


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise TrackingError(
            "W&B logging (--wandb-project) needs the wandb package: pip install 'megatron_cod[wandb]', "
            "or pass --wandb-mode disabled"
        ) from None
    return wandb


def _tag_list(tags: dict[str, str]) -> list[str]:
    return [f"{key}={value}"[:WANDB_TAG_MAX] for key, value in tags.items()]


class WandbSink:
    def __init__(self, wandb: Any, run: Any) -> None:
        self._wandb = wandb
        self._run = run

    @classmethod
    def start(
        cls, cfg: LoggingConfig, run_dir: Path, run_name: str, params: dict[str, str], tags: dict[str, str]
    ) -> WandbSink:
        wandb = import_wandb()
        run = wandb.init(
            project=cfg.wandb_project,
            name=run_name,
            dir=str(run_dir),
            mode=cfg.wandb_mode,
            config=params,
            tags=_tag_list(tags),
        )
        return cls(wandb, run)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def log_params(self, params: dict[str, str]) -> None:
        self._run.config.update(params, allow_val_change=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._run.tags = tuple(self._run.tags or ()) + tuple(_tag_list(tags))

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        artifact = self._wandb.Artifact(name=re.sub(r"[^\w.-]", "_", path.name), type="file")
        if path.is_dir():
            artifact.add_dir(str(path), name=artifact_path)
        else:
            name = f"{artifact_path}/{path.name}" if artifact_path else path.name
            artifact.add_file(str(path), name=name)
        self._run.log_artifact(artifact)

    def finish(self, status: RunStatus) -> None:
        self._run.finish(exit_code=0 if status == "FINISHED" else 1)
