"""Shared fixtures of the data-pipeline tests: small corpora, a small tokenizer, the built-in
dataset (built once per session into a pytest cache dir) and a single-rank gloo group."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from megatron_cod.data.inputs import normalize_text
from megatron_cod.data.tokenizer import train_bpe_tokenizer

# Records chosen to exercise what preprocessing must preserve: abbreviations and sentence ends,
# CRLF and lone CR line ends, surrounding whitespace, non-ASCII text, a literal special-token
# string, tabs and blank lines inside a document.
DOCUMENTS = [
    "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. It rained.",
    "  Leading and trailing spaces are dropped.  \n",
    "Line one.\r\nLine two after CRLF.\rLine three after a lone CR.",
    "Unicode: caf\u00e9, na\u00efve, \u00fcber, \u4e2d\u6587, emoji \U0001F600. Done!",
    "A literal <|endoftext|> inside text stays text. Next sentence here.",
    "Tabs\tand  double  spaces survive.\n\nA second paragraph follows. Is it kept?",
    "Short.",
    "What? Really! Yes... and then? \"Quoted sentence.\" (Parenthesised one.) End.",
]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return list(DOCUMENTS)


@pytest.fixture(scope="session")
def normalized_documents() -> list[str]:
    return [normalize_text(d) for d in DOCUMENTS]


def _write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({key: text, "id": i}) + "\n")
    return path


def _write_input(directory: Path, kind: str, texts: list[str]) -> Path:
    """``texts`` as input of ``kind``: a jsonl file, a jsonl.gz file, or (txt) a directory of
    .txt files, one per text, read in name order."""
    if kind == "jsonl":
        return _write_jsonl(directory / "input.jsonl", texts)
    if kind == "jsonl.gz":
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
        path = directory / "input.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
        return path
    if kind == "txt":
        folder = directory / "texts"
        folder.mkdir()
        for i, text in enumerate(texts):
            (folder / f"doc_{i:03d}.txt").write_bytes(text.encode("utf-8"))
        return folder
    raise ValueError(kind)


@pytest.fixture(scope="session")
def write_input():
    """``write_input(directory, kind, texts) -> Path``."""
    return _write_input


@pytest.fixture(scope="session")
def write_jsonl():
    """``write_jsonl(path, texts, key="text") -> Path``."""
    return _write_jsonl


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE saved the way the pipeline saves one."""
    text = " ".join(DOCUMENTS) * 20
    tokenizer = train_bpe_tokenizer([text, *DOCUMENTS], vocab_size=400)
    return tokenizer.save(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def builtin_dataset(tmp_path_factory):
    """The built-in dataset, built once per session; COD_CACHE_DIR points into a pytest dir."""
    from megatron_cod.data.builtin import ensure_builtin_dataset

    cache = tmp_path_factory.mktemp("cod_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COD_CACHE_DIR", str(cache))
        dataset = ensure_builtin_dataset(show_progress=False)
    return cache, dataset


@pytest.fixture
def gloo_group(tmp_path):
    """A single-rank gloo process group, destroyed afterwards."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1
    )
    yield
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="session")
def leftovers():
    """``leftovers(directory)``: names of ``.bin``/``.idx`` files or partial outputs in it."""

    def find(directory: Path) -> list[str]:
        return sorted(
            p.name
            for p in Path(directory).rglob("*")
            if p.suffix in (".bin", ".idx") or "partial" in p.name
        )

    return find
