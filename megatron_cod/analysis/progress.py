"""Progress reporting handed to the metric functions, so the math stays free of terminal code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[], None]


class ProgressReporter:
    """No-op base: ``with reporter.task("causal", total) as advance: ... advance()``."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda: None


class RichProgress(ProgressReporter):
    """Progress bars on stderr (one per metric: steps are batches x layers or batches x pairs)."""

    def __init__(self) -> None:
        self._console = Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        columns = (
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self._console) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda: progress.advance(task_id)


NO_PROGRESS = ProgressReporter()
