"""GPTDataset / blends over the pipeline's output, checked against an independent tokenization."""

from __future__ import annotations

from collections import Counter

import numpy
import pytest
import torch

from megatron_cod.data.cli import main
from megatron_cod.data.errors import DataError
from megatron_cod.data.gpt_datasets import build_gpt_datasets, parse_blend
from megatron_cod.data.inputs import normalize_text
from megatron_cod.data.tokenizer import load_tokenizer

SEQ = 16


def corpus(tag: str, count: int) -> list[str]:
    """Documents of clearly different lengths (2 to ~60 tokens)."""
    return [f"{tag} document {i}: " + " ".join(f"{tag}{j % 7}" for j in range(i * 3 % 23))
            for i in range(count)]


@pytest.fixture
def prefix_of(tmp_path, tokenizer_dir, write_jsonl):
    def build(tag: str, count: int) -> tuple[str, list[str]]:
        texts = corpus(tag, count)
        source = write_jsonl(tmp_path / f"{tag}.jsonl", texts)
        out = tmp_path / tag
        assert main(["--input", str(source), "--output-prefix", str(out), "--tokenizer",
                     str(tokenizer_dir), "--quiet"]) == 0
        return f"{out}_text_document", texts

    return build


def reference_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each (normalised) document tokenized directly by the HF tokenizer, plus the EOD id."""
    return [tokenizer.hf_tokenizer.encode(normalize_text(t)).ids + [tokenizer.eod] for t in texts]


def test_samples_are_windows_of_the_concatenated_documents(tmp_path, gloo_group, prefix_of,
                                                           tokenizer_dir):
    prefix, texts = prefix_of("alpha", 30)
    tokenizer = load_tokenizer(tokenizer_dir)
    docs = reference_documents(tokenizer, texts)
    train, valid, test = build_gpt_datasets([prefix], "8,1,1", SEQ, 1234, tokenizer,
                                            (50, 5, 5), cache_dir=str(tmp_path / "cache"))
    # "8,1,1" over 30 documents: megatron takes documents [0, 24), [24, 27), [27, 30).
    for dataset, documents in ((train, range(0, 24)), (valid, range(24, 27)),
                               (test, range(27, 30))):
        counts = Counter(dataset.document_index.tolist())
        assert set(counts) == set(documents)
        assert len(set(counts.values())) == 1  # every document once per epoch
        stream = numpy.concatenate([docs[d] for d in dataset.document_index])
        assert len(dataset) >= {id(train): 50, id(valid): 5, id(test): 5}[id(dataset)]
        for i in range(len(dataset)):
            start = int(dataset.shuffle_index[i]) * SEQ
            window = torch.from_numpy(stream[start:start + SEQ + 1].astype(numpy.int64))
            sample = dataset[i]
            assert torch.equal(sample["tokens"], window[:-1])
            assert torch.equal(sample["labels"], window[1:])


def test_weighted_blend_draws_in_proportion(tmp_path, gloo_group, prefix_of, tokenizer_dir):
    prefix_a, _ = prefix_of("alpha", 20)
    prefix_b, _ = prefix_of("beta", 20)
    tokenizer = load_tokenizer(tokenizer_dir)
    train, valid, test = build_gpt_datasets([f"0.7 {prefix_a} 0.3 {prefix_b}"], "1,0,0", SEQ,
                                            7, tokenizer, (1000, 0, 0),
                                            cache_dir=str(tmp_path / "cache"))
    assert valid is None and test is None
    assert len(train) == 1000
    assert [d.dataset_path for d in train.datasets] == [prefix_a, prefix_b]
    share_a = float(numpy.mean(train.dataset_index == 0))
    assert abs(share_a - 0.7) < 0.005
    for i in (0, 1, 500, 999):
        source = train.datasets[train.dataset_index[i]]
        expected = source[int(train.dataset_sample_index[i])]
        assert torch.equal(train[i]["tokens"], expected["tokens"])


def test_separate_blends_per_split(tmp_path, gloo_group, prefix_of, tokenizer_dir):
    prefix_a, _ = prefix_of("alpha", 20)
    prefix_b, _ = prefix_of("beta", 20)
    tokenizer = load_tokenizer(tokenizer_dir)
    train, valid, test = build_gpt_datasets([], None, SEQ, 7, tokenizer, (40, 8, 8),
                                            cache_dir=str(tmp_path / "cache"),
                                            per_split_paths=([prefix_a], [prefix_b], [prefix_b]))
    assert train.dataset_path == prefix_a and valid.dataset_path == prefix_b
    beta_ids = set(numpy.concatenate(reference_documents(tokenizer, corpus("beta", 20))).tolist())
    assert set(valid[0]["tokens"].tolist()) <= beta_ids


def test_data_path_errors(tmp_path, gloo_group, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    with pytest.raises(DataError, match="no Megatron dataset here"):
        build_gpt_datasets([str(tmp_path / "missing")], "1,0,0", SEQ, 1, tokenizer, (1, 0, 0))
    with pytest.raises(DataError, match="no data path given"):
        parse_blend([" "])


def test_needs_an_initialised_process_group(tokenizer_dir):
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        build_gpt_datasets(["x"], "1,0,0", SEQ, 1, load_tokenizer(tokenizer_dir), (1, 0, 0))
