"""Evaluation data: megatron-core's document split, seeded chunks of the held-out part, text input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_cod.analysis.data import DataConfig, load_eval_tokens, split_range
from megatron_cod.analysis.errors import AnalysisError


def build_indexed(tmp_path, documents: list[list[list[int]]]) -> str:
    prefix = str(tmp_path / "corpus")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for doc in documents:
        for sentence in doc:
            builder.add_item(torch.tensor(sentence))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def is_slice_of(chunk: np.ndarray, stream: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(chunk))
    return bool((windows == chunk).all(axis=1).any())


def test_split_range_follows_megatron():
    assert split_range(10, "80,20,0", "train") == (0, 8)
    assert split_range(10, "80,20,0", "valid") == (8, 10)
    assert split_range(10, "80,20,0", "test") == (0, 0)
    assert split_range(1000, "949,50,1", "valid") == (949, 999)


def test_indexed_chunks_come_from_the_valid_documents_only(tmp_path):
    # 10 documents of two sentences; document k holds tokens 1000k + i so every token names its document.
    docs = [[[1000 * k + i for i in range(7)], [1000 * k + i for i in range(7, 15)]] for k in range(10)]
    prefix = build_indexed(tmp_path, docs)
    config = DataConfig(data_prefix=prefix, num_samples=4, seq_length=6, seed=3, split="80,20,0")
    tokens, info = load_eval_tokens(config)
    assert tokens.shape == (4, 6) and tokens.dtype == torch.int64
    valid_stream = np.concatenate([np.concatenate(d) for d in docs[8:]])
    assert info["part_tokens"] == valid_stream.size == 30
    for row in tokens.numpy():
        assert is_slice_of(row, valid_stream)
        assert set(row // 1000) <= {8, 9}
    starts = sorted(int(np.flatnonzero(valid_stream == row[0])[0]) for row in tokens.numpy())
    assert all(s % 6 == 0 for s in starts) and len(set(starts)) == 4  # distinct aligned chunks
    again, _ = load_eval_tokens(config)
    assert torch.equal(tokens, again)
    other, _ = load_eval_tokens(
        DataConfig(data_prefix=prefix, num_samples=4, seq_length=6, seed=4, split="80,20,0")
    )
    assert not torch.equal(tokens, other)


def test_text_file_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = [f"line {i} says hello world number {i}" for i in range(20)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n\n")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    config = DataConfig(
        text_file=str(tmp_path / "text.txt"),
        tokenizer=str(tmp_path),
        num_samples=3,
        seq_length=5,
        split="50,50,0",
    )
    tokens, _ = load_eval_tokens(config)
    stream = np.concatenate([tok.encode(line).ids for line in lines[10:]])
    for row in tokens.numpy():
        assert is_slice_of(row, stream)


def test_bad_data_input(tmp_path):
    with pytest.raises(AnalysisError, match="exactly one"):
        DataConfig()
    with pytest.raises(AnalysisError, match="--tokenizer"):
        DataConfig(text_file="x.txt")
    with pytest.raises(AnalysisError, match="no .*bin"):
        load_eval_tokens(DataConfig(data_prefix=str(tmp_path / "missing")))
    prefix = build_indexed(tmp_path, [[[1, 2, 3]]] * 4)
    with pytest.raises(AnalysisError, match="needs more data"):
        load_eval_tokens(DataConfig(data_prefix=prefix, num_samples=5, seq_length=4, split="50,50,0"))


@pytest.mark.parametrize("content", ["{not json", ""])
def test_a_bad_tokenizer_is_one_line_naming_the_flag_and_the_file(tmp_path, content):
    (tmp_path / "text.txt").write_text("hello world\n" * 10)
    (tmp_path / "tokenizer.json").write_text(content)
    config = DataConfig(text_file=str(tmp_path / "text.txt"), tokenizer=str(tmp_path), split="50,50,0")
    with pytest.raises(AnalysisError) as info:
        load_eval_tokens(config)
    message = str(info.value)
    assert message.startswith(f"--tokenizer {tmp_path / 'tokenizer.json'}: not a tokenizer (")
    assert len(message.splitlines()) == 1
