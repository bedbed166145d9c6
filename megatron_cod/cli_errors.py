"""The one error path of every command-line tool: a user error is one line on stderr, never a traceback.

Each ``main(argv)`` is wrapped by :func:`cli_main`. An exception reaching it becomes
``<prefix>error: <message>`` (the message names the flag, file or key) and an exit status:
2 for usage errors (bad flags, values, combinations: argparse, ConfigError, CompareError, UsageError),
1 for run-time failures (unreadable or corrupt files, refused models, a failed write), 130 for Ctrl-C,
143 for SIGTERM inside a tracked run (tracking.RunTerminated).
``--debug`` (taken out of argv before the command parses it) or ``COD_DEBUG=1`` lets the exception
through with its traceback.

Under torchrun only rank 0 prints, and every rank leaves at once with ``os._exit``: a rank that
returned normally could wait forever at exit in a collective the failed rank never joins.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

USAGE = 2
FAILURE = 1
INTERRUPTED = 130
TERMINATED = 143
DEBUG_FLAG = "--debug"
DEBUG_ENV = "COD_DEBUG"

Main = Callable[[list[str]], int]


class EntryPoint(Protocol):
    """A console-script main: ``main()`` reads sys.argv, ``main(argv)`` is for tests and callers."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


class UsageError(Exception):
    """A bad flag, value or combination of flags (exit status 2); the message names the flag."""


class OneLineParser(argparse.ArgumentParser):
    """argparse without its usage block: a parse error raises UsageError, reported as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _usage_types() -> tuple[type[BaseException], ...]:
    from megatron_cod.compare.errors import CompareError
    from megatron_cod.config.errors import ConfigError

    return (UsageError, ConfigError, CompareError)


def _failure_types() -> tuple[type[BaseException], ...]:
    from megatron_cod.analysis.errors import AnalysisError
    from megatron_cod.data.errors import DataError
    from megatron_cod.export.errors import ExportError
    from megatron_cod.tracking.sink import TrackingError

    types: list[type[BaseException]] = [DataError, AnalysisError, ExportError, TrackingError]
    checkpoint = sys.modules.get("megatron_cod.training.checkpoint")  # only loaded with torch
    if checkpoint is not None:
        types.append(checkpoint.CheckpointError)
    return tuple(types)


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception that reached a command's main()."""
    if isinstance(exc, _usage_types()):
        return USAGE, one_line(str(exc))
    if isinstance(exc, _failure_types()):
        return FAILURE, one_line(str(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return FAILURE, one_line(f"{where}{exc.strerror or exc}")
    if isinstance(exc, (FileExistsError, ValueError)) and str(exc):
        return FAILURE, one_line(str(exc))
    detail = one_line(str(exc)) or "no message"
    return (
        FAILURE,
        f"{type(exc).__name__}: {detail} (unexpected; {DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback)",
    )


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def debug_requested(argv: Sequence[str]) -> bool:
    options = list(argv)[: list(argv).index("--")] if "--" in argv else list(argv)
    return DEBUG_FLAG in options or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(prefix: str, code: int, message: str) -> int:
    """Print the one line (rank 0 only); under torchrun leave the process now with `code`."""
    if _rank() == 0:
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
    if _distributed():
        sys.stdout.flush()
        os._exit(code)
    return code


def cli_main(prefix: str) -> Callable[[Main], EntryPoint]:
    """Decorate ``body(argv) -> exit status`` into a ``main(argv=None)`` with the shared error path.

    ``prefix`` starts the error line ("cod-analyze: " or "" where tools always printed "error: ...").
    """

    def wrap(body: Main) -> EntryPoint:
        @functools.wraps(body)
        def main(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            debug = debug_requested(args)
            try:
                return body([a for a in args if a != DEBUG_FLAG])
            except KeyboardInterrupt:
                if debug:
                    raise
                return report(prefix, INTERRUPTED, "interrupted")
            except Exception as exc:
                if debug:
                    raise
                code, message = describe(exc)
                return report(prefix, code, message)
            except BaseException as exc:
                from megatron_cod.tracking.lifecycle import RunTerminated

                if debug or not isinstance(exc, RunTerminated):
                    raise
                return report(prefix, TERMINATED, str(exc))

        return main

    return wrap
