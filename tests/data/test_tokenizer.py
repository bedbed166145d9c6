"""CodTokenizer: loading from every supported source, training, saving, megatron's interface."""

from __future__ import annotations

import inspect
import json
import pickle
import warnings

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron_cod.data.errors import DataError
from megatron_cod.data.tokenizer import (
    DEFAULT_EOD,
    DEFAULT_PAD,
    METADATA_FILE,
    MIN_BPE_VOCAB,
    CodTokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

SAMPLE = "Hello, world! Caf\u00e9 \u4e2d\u6587 \U0001F600\n\ttabs  and spaces <|pad|> end."


def test_trained_bpe_round_trips_any_text_and_reserves_special_ids(documents):
    tokenizer = train_bpe_tokenizer(documents * 3, vocab_size=320)
    assert (tokenizer.eod, tokenizer.pad) == (0, 1)
    assert tokenizer.vocab[DEFAULT_EOD] == 0 and tokenizer.vocab[DEFAULT_PAD] == 1
    assert MIN_BPE_VOCAB <= tokenizer.vocab_size <= 320
    for text in [*documents, SAMPLE, "\x00\x7f\u200b"]:
        ids = tokenizer.tokenize(text)
        assert tokenizer.detokenize(ids) == text
        assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_special_token_strings_in_text_stay_text(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer.tokenize(f"before {DEFAULT_EOD} after {DEFAULT_PAD}")
    assert tokenizer.eod not in ids and tokenizer.pad not in ids
    assert tokenizer.detokenize(ids) == f"before {DEFAULT_EOD} after {DEFAULT_PAD}"


def test_save_and_load_give_the_same_tokenizer(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    saved = tokenizer.save(tmp_path / "copy")
    assert sorted(p.name for p in saved.iterdir()) == [METADATA_FILE, "tokenizer.json"]
    metadata = json.loads((saved / METADATA_FILE).read_text())
    assert metadata["eod_token"] == DEFAULT_EOD and metadata["pad_token"] == DEFAULT_PAD
    assert metadata["vocab_size"] == tokenizer.vocab_size
    again = load_tokenizer(saved)
    from_file = load_tokenizer(saved / "tokenizer.json")
    for other in (again, from_file):
        assert other.sha256 == tokenizer.sha256
        assert (other.eod, other.pad, other.vocab_size) == (
            tokenizer.eod, tokenizer.pad, tokenizer.vocab_size)
        assert other.tokenize(SAMPLE) == tokenizer.tokenize(SAMPLE)


def test_pickling_keeps_the_behaviour(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    copy = pickle.loads(pickle.dumps(tokenizer))
    text = f"x {DEFAULT_EOD} y"
    assert copy.tokenize(text) == tokenizer.tokenize(text)
    assert copy.unique_identifiers == tokenizer.unique_identifiers


def gpt2_style_files(directory, with_pad: bool):
    """Megatron-style vocab.json + merges.txt, made by training a GPT-2-like byte-level BPE."""
    specials = [DEFAULT_EOD, DEFAULT_PAD] if with_pad else [DEFAULT_EOD]
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([SAMPLE * 5, "the cat sat on the mat " * 20], trainer=trainer)
    directory.mkdir()
    hf.model.save(str(directory))
    return hf


@pytest.mark.parametrize("with_pad", [True, False])
def test_megatron_gpt2_vocab_and_merges(tmp_path, with_pad):
    reference = gpt2_style_files(tmp_path / "gpt2", with_pad)
    size = reference.get_vocab_size()
    for path in (tmp_path / "gpt2", tmp_path / "gpt2" / "vocab.json"):
        tokenizer = load_tokenizer(path)
        assert tokenizer.tokenize(SAMPLE.replace("<|pad|>", "")) == reference.encode(
            SAMPLE.replace("<|pad|>", "")).ids
        assert tokenizer.eod == reference.token_to_id(DEFAULT_EOD)
        if with_pad:
            pad = reference.token_to_id(DEFAULT_PAD)
            assert (tokenizer.pad, tokenizer.vocab_size) == (pad, size)
        else:  # a pad token is added after the vocabulary instead of reusing the EOD id
            assert (tokenizer.pad, tokenizer.vocab_size) == (size, size + 1)


def test_hf_tokenizer_json_without_our_metadata(tmp_path):
    hf = Tokenizer(models.WordLevel({"</s>": 0, "<pad>": 1, "a": 2, "[UNK]": 3},
                                    unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "hf").mkdir()
    hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path / "hf")
    assert (tokenizer.eod_token, tokenizer.eod, tokenizer.pad_token, tokenizer.pad) == (
        "</s>", 0, "<pad>", 1)

    (tmp_path / "hf" / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "a"}, "pad_token": "<pad>"}))
    assert load_tokenizer(tmp_path / "hf").eod == 2


def test_tokenizer_json_without_an_end_of_document_token(tmp_path):
    hf = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    with pytest.raises(DataError, match="tokenizer has no end-of-document token"):
        load_tokenizer(path)


def test_implements_megatron_legacy_tokenizer_interface(tokenizer_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer as Base
        except ImportError:
            from megatron.core.datasets.megatron_tokenizer import MegatronTokenizer as Base
    tokenizer = load_tokenizer(tokenizer_dir)
    abstract = {name for name, _ in inspect.getmembers(Base)
                if getattr(getattr(Base, name), "__isabstractmethod__", False)}
    assert abstract >= {"tokenize", "vocab", "inv_vocab", "vocab_size"}
    for name in abstract | {"detokenize", "eod", "pad", "eos"}:
        assert hasattr(tokenizer, name), name
    assert tokenizer.inv_vocab[tokenizer.eod] == DEFAULT_EOD
    assert len(tokenizer.vocab) == tokenizer.vocab_size
    json.dumps(tokenizer.unique_identifiers)  # megatron hashes it into dataset cache names


def test_eod_and_pad_must_differ():
    hf = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(DataError, match="pad token must differ"):
        CodTokenizer(hf, DEFAULT_EOD, DEFAULT_EOD)
