"""Punkt splitting: lossless, trained offline, stored as JSON (never a pickle)."""

from __future__ import annotations

import json

import pytest
from nltk.tokenize.punkt import PunktSentenceTokenizer

from megatron_cod.data.errors import DataError
from megatron_cod.data.sentences import (
    SEED_ABBREVIATIONS,
    SentenceSplitter,
    load_params,
    save_params,
    train_punkt,
)

TRAINING_TEXT = (
    "The committee met on Tuesday. Members discussed the budget at length. "
    "Mr. Jones proposed a new plan. It was rejected by a narrow margin. "
    "The chair, e.g. the eldest member, closed the session. Everyone left early. "
) * 30


@pytest.fixture(scope="module")
def params():
    return train_punkt([TRAINING_TEXT])


def test_split_is_lossless(params, documents):
    splitter = SentenceSplitter(params)
    for text in [*documents, "  padded  ", "No end punctuation", "One.  Two.\n\nThree?"]:
        assert "".join(splitter.split(text)) == text
    assert splitter.split("") == []


def test_sentences_match_punkt_spans_plus_following_whitespace(params):
    text = "First one here.  Second one?\n\nThird one!  "
    reference = PunktSentenceTokenizer(params).tokenize(text)
    pieces = SentenceSplitter(params).split(text)
    assert [p.strip() for p in pieces] == reference
    assert pieces == ["First one here.  ", "Second one?\n\n", "Third one!  "]


def test_training_seeds_the_abbreviations(params):
    assert set(SEED_ABBREVIATIONS) <= params.abbrev_types
    assert SentenceSplitter(params).split("Dr. Who arrived. He left.") == [
        "Dr. Who arrived. ", "He left."]


def test_training_reads_at_most_the_sample(monkeypatch):
    seen = []
    texts = ["A first text. " * 10, "A second text. " * 10, "never read"]

    def record(self, text, verbose=False, finalize=True):
        seen.append(text)

    monkeypatch.setattr("nltk.tokenize.punkt.PunktTrainer.train", record)
    train_punkt(iter(texts), max_chars=len(texts[0]) + 5)
    assert seen == [texts[0], texts[1][:5]]


def test_parameters_round_trip_through_json(tmp_path, params):
    path = save_params(params, tmp_path / "punkt.json")
    data = json.loads(path.read_text())  # plain JSON: nothing to unpickle
    assert data["format"] == "megatron_cod.punkt/1"
    loaded = load_params(path)
    assert loaded.abbrev_types == params.abbrev_types
    assert loaded.collocations == params.collocations
    assert loaded.sent_starters == params.sent_starters
    assert dict(loaded.ortho_context) == dict(params.ortho_context)
    assert SentenceSplitter(loaded).split(TRAINING_TEXT) == SentenceSplitter(params).split(
        TRAINING_TEXT)


def test_bad_parameter_files(tmp_path):
    not_json = tmp_path / "a.json"
    not_json.write_bytes(b"\x80\x03pickle?")
    with pytest.raises(DataError, match="not a sentence-splitter file"):
        load_params(not_json)
    other = tmp_path / "b.json"
    other.write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a sentence-splitter file"):
        load_params(other)
    with pytest.raises(DataError, match="no text to train"):
        train_punkt([])
