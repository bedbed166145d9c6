"""Progress display for preprocessing: input consumed, documents/s and tokens/s (on stderr)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


class ThroughputProgress:
    """A rich progress bar over input bytes, showing document and token rates.

    ``total_bytes`` None (gzip or pipe input) gives an indeterminate bar. Disabled, it does
    nothing, so callers need no branches.
    """

    def __init__(self, total_bytes: int | None, enabled: bool, description: str = "tokenizing"):
        self._start = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[docs_rate]} docs/s"),
            TextColumn("{task.fields[tokens_rate]} tok/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total_bytes, docs_rate="-", tokens_rate="-")

    def update(self, bytes_done: int, documents: int, tokens: int) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._progress.update(
            self._task,
            completed=bytes_done,
            docs_rate=f"{documents / elapsed:,.0f}",
            tokens_rate=f"{tokens / elapsed:,.0f}",
        )

    def __enter__(self) -> ThroughputProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._progress.stop()
