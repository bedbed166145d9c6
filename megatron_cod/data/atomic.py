"""Writes that never leave a half-written file or directory under the final name.

A file is written to a temporary sibling and renamed into place; a directory is filled as a
temporary sibling and swapped in whole. A failure (or Ctrl-C) removes the temporary and keeps
whatever was there before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: Literal["w", "wb"] = "w") -> Iterator[IO[Any]]:
    """A handle on a temporary sibling of ``path``; it becomes ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _sibling(path)
    # created like open() would (umask applies), unlike mkstemp's owner-only files
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _sibling(path: Path) -> Path:
    """A hidden, unused name beside ``path``, unique across processes and threads."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def replace_path(temp: Path, final: Path) -> None:
    """Rename a finished file or directory ``temp`` to ``final``, replacing what is there.

    A directory already at ``final`` is moved aside first and removed last, so ``final`` always
    names a complete directory, the old or the new one.
    """
    if not (final.is_dir() and not final.is_symlink()):
        os.replace(temp, final)
        return
    retired = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(final, retired)
    os.replace(temp, final)
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """An empty temporary sibling of ``final`` to fill; it replaces ``final`` whole when the block succeeds."""
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(final)
    staging.mkdir()
    try:
        yield staging
        replace_path(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
