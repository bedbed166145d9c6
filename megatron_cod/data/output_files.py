"""All-or-nothing output: every file of a run is written under a temporary name and renamed at the
end, ``.idx`` files last, so an interrupted or failed run never leaves a ``.bin/.idx`` pair that
looks complete (megatron treats a prefix as present when both files exist).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from megatron_cod.data.atomic import replace_path
from megatron_cod.data.errors import DataError


class OutputFiles:
    """Temporary paths for the final outputs of one run, committed or removed together.

    Construction checks that the output directory can be created and written to, and refuses
    existing outputs unless ``overwrite``; both before any expensive work starts.
    """

    def __init__(self, finals: Sequence[str | Path], overwrite: bool = False) -> None:
        self.finals = [Path(p) for p in finals]
        for directory in sorted({p.parent for p in self.finals}):
            _check_writable(directory)
        existing = [p for p in self.finals if p.exists() or p.is_symlink()]
        if existing and not overwrite:
            raise DataError(f"{existing[0]}: output exists (pass --overwrite to replace it)")
        tag = f"partial-{os.getpid()}"
        self._temps = {p: p.with_name(f".{p.name}.{tag}") for p in self.finals}
        self._committed = False

    def temp(self, final: str | Path) -> Path:
        """Where to write ``final`` until :meth:`commit`."""
        return self._temps[Path(final)]

    def commit(self) -> None:
        """Move every temporary output to its final name; old ``.idx`` files go first."""
        order = sorted(self.finals, key=lambda p: p.suffix == ".idx")
        for final in order:
            if final.suffix == ".idx" and final.exists():
                final.unlink()
        for final in order:
            temp = self._temps[final]
            if not (temp.exists() or temp.is_symlink()):
                continue
            replace_path(temp, final)
        self._committed = True

    def abort(self) -> None:
        """Remove every temporary output (no effect after :meth:`commit`)."""
        if self._committed:
            return
        for temp in self._temps.values():
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{directory}: cannot create the output directory ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".cod-write-probe-")
    except OSError as exc:
        raise DataError(f"{directory}: output directory is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
