"""Evaluation sequences: seeded fixed-length chunks from the held-out documents of a corpus.

Sources: a Megatron indexed dataset prefix (the data pipeline's .bin/.idx) or a text file with
one document per non-empty line plus an HF ``tokenizers`` tokenizer.json. Documents are split
train/valid/test by a Megatron split string ("949,50,1") exactly as megatron-core splits them
(by document index), and the chosen part (valid by default, i.e. held out from training) is
concatenated and cut into non-overlapping ``seq_length`` chunks, like the paper's MemMapDataset.
``num_samples`` distinct chunks are drawn with a seeded generator; their order is random, so the
first k sequences are a random subset too (metrics with a sequence cap use such prefixes).
Only the chosen chunks are read from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_cod.analysis.errors import AnalysisError
from megatron_cod.data.errors import DataError
from megatron_cod.data.tokenizer import load_hf_tokenizer

SPLIT_PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataConfig:
    data_prefix: str | None = None
    text_file: str | None = None
    tokenizer: str | None = None
    num_samples: int = 64
    seq_length: int = 512
    seed: int = 0
    split: str = "949,50,1"
    split_part: str = "valid"

    def __post_init__(self) -> None:
        if (self.data_prefix is None) == (self.text_file is None):
            raise AnalysisError("give exactly one of --data-prefix and --text-file")
        if self.text_file is not None and self.tokenizer is None:
            raise AnalysisError(
                "--text-file needs --tokenizer (a tokenizer.json file or a directory holding one)"
            )
        if self.num_samples < 1 or self.seq_length < 2:
            raise AnalysisError("--num-samples must be >= 1 and --seq-length >= 2")
        if self.split_part not in SPLIT_PARTS:
            raise AnalysisError(f"--split-part must be one of {SPLIT_PARTS}")


@dataclass(frozen=True)
class TokenStream:
    """Documents seen as one concatenated stream: lengths, and a reader of (doc, offset, count)."""

    lengths: np.ndarray
    read: Callable[[int, int, int], np.ndarray]

    def chunk(self, start: int, length: int) -> np.ndarray:
        ends = np.cumsum(self.lengths)
        doc = int(np.searchsorted(ends, start, side="right"))
        offset = start - (int(ends[doc - 1]) if doc > 0 else 0)
        pieces, needed = [], length
        while needed > 0:
            take = min(needed, int(self.lengths[doc]) - offset)
            pieces.append(self.read(doc, offset, take))
            needed -= take
            doc, offset = doc + 1, 0
        return np.concatenate(pieces)


def split_range(num_documents: int, split: str, part: str) -> tuple[int, int]:
    """[begin, end) of the documents in ``part``, as megatron-core's dataset builder computes it."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    try:
        bookends = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))[
            SPLIT_PARTS.index(part)
        ]
    except (AssertionError, ValueError, ZeroDivisionError) as exc:
        raise AnalysisError(f"bad --split {split!r}: expected weights like '949,50,1'") from exc
    if bookends is None:
        return 0, 0
    return int(round(bookends[0] * num_documents)), int(round(bookends[1] * num_documents))


def _indexed_stream(prefix: str, split: str, part: str) -> TokenStream:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if not IndexedDataset.exists(prefix):
        raise AnalysisError(f"--data-prefix {prefix}: no {prefix}.bin / {prefix}.idx")
    dataset = IndexedDataset(prefix)
    doc_bounds = dataset.document_indices
    begin, end = split_range(len(doc_bounds) - 1, split, part)
    first, last = int(doc_bounds[begin]), int(doc_bounds[end])
    lengths = np.asarray(dataset.sequence_lengths[first:last], dtype=np.int64)
    return TokenStream(lengths, lambda i, offset, count: np.asarray(dataset.get(first + i, offset, count)))


def _text_stream(text_file: str, tokenizer_path: str, split: str, part: str) -> TokenStream:
    path = Path(text_file)
    if not path.is_file():
        raise AnalysisError(f"--text-file {text_file}: no such file")
    documents = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    begin, end = split_range(len(documents), split, part)
    try:
        tokenizer = load_hf_tokenizer(tokenizer_path)
    except DataError as exc:
        raise AnalysisError(f"--tokenizer {exc}") from None
    encoded = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(documents[begin:end])]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    return TokenStream(lengths, lambda i, offset, count: encoded[i][offset : offset + count])


def load_eval_tokens(config: DataConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """[num_samples, seq_length] token ids and a description of where they came from."""
    if config.data_prefix is not None:
        stream = _indexed_stream(config.data_prefix, config.split, config.split_part)
        source = {"data_prefix": config.data_prefix}
    elif config.text_file is not None and config.tokenizer is not None:
        stream = _text_stream(config.text_file, config.tokenizer, config.split, config.split_part)
        source = {"text_file": config.text_file, "tokenizer": config.tokenizer}
    else:  # DataConfig validates this at construction
        raise AnalysisError("--text-file needs --tokenizer")
    total = int(stream.lengths.sum())
    num_chunks = total // config.seq_length
    if num_chunks < config.num_samples:
        raise AnalysisError(
            f"the {config.split_part} part ({total} tokens) holds {num_chunks} chunks of {config.seq_length} "
            f"tokens; --num-samples {config.num_samples} needs more data, a shorter --seq-length or another --split"
        )
    rng = np.random.default_rng(config.seed)
    chosen = rng.choice(num_chunks, size=config.num_samples, replace=False)
    tokens = np.stack([stream.chunk(int(c) * config.seq_length, config.seq_length) for c in chosen])
    info = {
        **source,
        "split": config.split,
        "split_part": config.split_part,
        "part_tokens": total,
        "num_samples": config.num_samples,
        "seq_length": config.seq_length,
        "seed": config.seed,
        "chunks": chosen.tolist(),
    }
    return torch.from_numpy(tokens.astype(np.int64)), info
