"""Input files and the records in them: jsonl / json-lines / txt, optionally gzip-compressed.

A record becomes one document of the output. In jsonl every non-blank line is a record; in txt
the unit is chosen by the caller (``file``: the whole file, ``paragraph``: blocks separated by
blank lines, ``line``: every non-blank line). Every error names the file and, where there is
one, the line, and raises :class:`DataError`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from megatron_cod.data.errors import DataError

TXT_UNITS = ("file", "paragraph", "line")
ERROR_MODES = ("strict", "replace")
_JSONL_SUFFIXES = (".jsonl", ".json")
_TXT_SUFFIXES = (".txt",)
_GLOB_CHARS = set("*?[")


def normalize_text(text: str) -> str:
    """The text a document stores: line ends as ``\\n`` and no whitespace at either end.

    This is the whole normalisation; decoding a document of the output gives back exactly this.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def input_kind(path: Path) -> str | None:
    """``"jsonl"`` or ``"txt"`` from the file name (a ``.gz`` suffix allowed), else None."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_TXT_SUFFIXES):
        return "txt"
    return None


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """Files named by ``specs``: paths, directories (searched recursively) or glob patterns.

    Order is kept as given, with each directory or pattern sorted, and a file named twice is read
    once. Anything that names no readable input raises :class:`DataError`.
    """
    if not specs:
        raise DataError("no input given (use --input FILE|DIR|GLOB)")
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p))
            if not files:
                raise DataError(f"{spec}: directory holds no .jsonl/.json/.txt (or .gz) files")
        elif _GLOB_CHARS & set(spec) and not path.exists():
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            files = [p for p in matches if p.is_file() and input_kind(p)]
            if not files:
                raise DataError(f"{spec}: no .jsonl/.json/.txt (or .gz) files match")
        elif path.exists():
            if path.is_dir() or input_kind(path) is None:
                raise DataError(
                    f"{spec}: unsupported input type (expected .jsonl, .json or .txt, optionally .gz)"
                )
            files = [path]
        else:
            raise DataError(f"{spec}: no such file or directory")
        found.extend(files)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def total_input_bytes(paths: Sequence[Path]) -> int | None:
    """Bytes the reader will count for ``paths``, or None when unknown (gzip, pipes)."""
    total = 0
    for path in paths:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or path.name.lower().endswith(".gz"):
            return None
        total += info.st_size
    return total


@dataclass(frozen=True)
class Record:
    """One input record: where it starts and its normalised text for each requested key."""

    source: str
    line: int
    texts: tuple[str, ...]


class InputReader:
    """Iterates the records of several files; counts what it reads and what it skips.

    A record whose text is empty (after normalisation) for any key is skipped and counted in
    ``empty_records``, so that document *i* of every key's output comes from the same record.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        json_keys: Sequence[str] = ("text",),
        errors: str = "strict",
        txt_unit: str = "file",
    ) -> None:
        if not json_keys:
            raise DataError("--json-keys needs at least one key")
        if errors not in ERROR_MODES:
            raise DataError(f"--errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}")
        if txt_unit not in TXT_UNITS:
            raise DataError(f"--txt-unit must be one of {', '.join(TXT_UNITS)}, got {txt_unit!r}")
        if len(json_keys) > 1:
            txt_files = [str(p) for p in paths if input_kind(p) == "txt"]
            if txt_files:
                raise DataError(
                    f"{txt_files[0]}: a .txt input has one text per record; "
                    "more than one --json-keys needs .jsonl inputs"
                )
        self.paths = list(paths)
        self.json_keys = tuple(json_keys)
        self.errors = errors
        self.txt_unit = txt_unit
        self.bytes_read = 0
        self.records = 0
        self.empty_records = 0
        self.blank_lines = 0
        self.lines_with_replacements = 0

    def __iter__(self) -> Iterator[Record]:
        for path in self.paths:
            for record in self._read_file(path):
                if any(not text for text in record.texts):
                    self.empty_records += 1
                    continue
                self.records += 1
                yield record

    def _read_file(self, path: Path) -> Iterator[Record]:
        try:
            with _open_binary(path) as stream:
                lines = self._decoded_lines(path, stream)
                if input_kind(path) == "jsonl":
                    yield from self._jsonl_records(path, lines)
                else:
                    yield from self._txt_records(path, lines)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def _decoded_lines(self, path: Path, stream: BinaryIO) -> Iterator[tuple[int, str]]:
        for number, raw in enumerate(stream, start=1):
            self.bytes_read += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if self.errors == "strict":
                    raise DataError(
                        f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"column {exc.start + 1}); fix the file or pass --errors replace"
                    ) from None
                line = raw.decode("utf-8", errors="replace")
                self.lines_with_replacements += 1
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield number, line

    def _jsonl_records(self, path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
        for number, line in lines:
            if not line.strip():
                self.blank_lines += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{number}: a record must be a JSON object, got {type(obj).__name__}")
            texts = []
            for key in self.json_keys:
                if key not in obj:
                    have = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
                    raise DataError(
                        f"{path}:{number}: record has no key {key!r} (keys: {have}); "
                        "choose the text field with --json-keys"
                    )
                value = obj[key]
                if not isinstance(value, str):
                    raise DataError(
                        f"{path}:{number}: key {key!r} holds {type(value).__name__}, not a string"
                    )
                texts.append(normalize_text(value))
            yield Record(str(path), number, tuple(texts))

    def _txt_records(self, path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
        if self.txt_unit == "line":
            for number, line in lines:
                if line.strip():
                    yield Record(str(path), number, (normalize_text(line),))
                else:
                    self.blank_lines += 1
            return
        if self.txt_unit == "file":
            yield Record(str(path), 1, (normalize_text("".join(line for _, line in lines)),))
            return
        block: list[str] = []
        start = 0
        for number, line in lines:
            if line.strip():
                if not block:
                    start = number
                block.append(line)
            elif block:
                yield Record(str(path), start, (normalize_text("".join(block)),))
                block = []
        if block:
            yield Record(str(path), start, (normalize_text("".join(block)),))


def _open_binary(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")
