"""What every tracking backend implements, and the run end states they share."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
RUN_STATUSES: tuple[RunStatus, ...] = ("FINISHED", "FAILED", "KILLED")


class TrackingError(RuntimeError):
    """A tracking backend cannot be used as configured; the message is meant for the user."""


class Sink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_params(self, params: dict[str, str]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None) -> None: ...

    def finish(self, status: RunStatus) -> None: ...
