"""Round trips through the whole pipeline, read back with megatron-core's own IndexedDataset."""

from __future__ import annotations

import json
import re
import warnings

import numpy
import pytest

from megatron_cod.data.cli import main
from megatron_cod.data.inputs import normalize_text
from megatron_cod.data.sentences import SentenceSplitter, load_params
from megatron_cod.data.tokenizer import load_tokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset


def documents_of(prefix: str) -> list[list[numpy.ndarray]]:
    """Every document of a Megatron dataset as its list of sequences (copied: the arrays megatron
    returns view a memory map that is closed with the dataset)."""
    dataset = IndexedDataset(prefix)
    bounds = dataset.document_indices
    return [
        [numpy.array(dataset[i]) for i in range(bounds[d], bounds[d + 1])]
        for d in range(len(bounds) - 1)
    ]


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "txt"])
@pytest.mark.parametrize("split_sentences", [False, True])
def test_round_trip(tmp_path, kind, split_sentences, documents, write_input, tokenizer_dir):
    source = write_input(tmp_path, kind, documents)
    prefix = tmp_path / "out" / "corpus"
    argv = ["--input", str(source), "--output-prefix", str(prefix), "--tokenizer",
            str(tokenizer_dir), "--quiet"]
    assert main(argv + (["--split-sentences"] if split_sentences else [])) == 0

    tokenizer = load_tokenizer(tokenizer_dir)
    level = "sentence" if split_sentences else "document"
    decoded = documents_of(f"{prefix}_text_{level}")
    expected = [normalize_text(d) for d in documents]
    assert len(decoded) == len(expected)
    splitter = SentenceSplitter(load_params(f"{prefix}_punkt.json")) if split_sentences else None
    for sequences, text in zip(decoded, expected):
        ids = numpy.concatenate(sequences)
        assert ids.dtype == numpy.uint16
        assert ids[-1] == tokenizer.eod and tokenizer.eod not in ids[:-1]
        assert tokenizer.detokenize(ids[:-1]) == text
        if splitter is None:
            assert len(sequences) == 1
        else:
            pieces = [tokenizer.detokenize(s[s != tokenizer.eod]) for s in sequences]
            assert pieces == splitter.split(text)

    summary = json.loads((tmp_path / "out" / "corpus_summary.json").read_text())
    assert summary["documents"] == len(expected)
    assert summary["tokens"] == sum(len(s) for doc in decoded for s in doc)
    if not split_sentences:
        hf = tokenizer.hf_tokenizer
        assert summary["tokens"] == sum(len(hf.encode(t).ids) + 1 for t in expected)
    else:
        assert summary["sentences"] == sum(len(splitter.split(t)) for t in expected)
        assert summary["sentences"] > len(expected)


def test_two_workers_write_the_same_bytes(tmp_path, documents, write_jsonl, tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", documents * 40)
    outputs = []
    for workers in (1, 2):
        prefix = tmp_path / f"w{workers}"
        assert main(["--input", str(source), "--output-prefix", str(prefix), "--tokenizer",
                     str(tokenizer_dir), "--split-sentences", "--workers", str(workers),
                     "--quiet"]) == 0
        outputs.append([(tmp_path / f"w{workers}_text_sentence{ext}").read_bytes()
                        for ext in (".bin", ".idx")])
    assert outputs[0] == outputs[1]


def test_several_json_keys_stay_aligned(tmp_path, tokenizer_dir):
    records = [{"title": f"Title {i}", "text": f"Body number {i}. " * (i + 1)} for i in range(7)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = tmp_path / "out"
    assert main(["--input", str(source), "--output-prefix", str(prefix), "--json-keys",
                 "text", "title", "--tokenizer", str(tokenizer_dir), "--quiet"]) == 0
    tokenizer = load_tokenizer(tokenizer_dir)
    for key in ("text", "title"):
        decoded = [tokenizer.detokenize(numpy.concatenate(d)[:-1])
                   for d in documents_of(f"{prefix}_{key}_document")]
        assert decoded == [normalize_text(r[key]) for r in records]


def test_without_eod(tmp_path, documents, write_jsonl, tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", documents)
    prefix = tmp_path / "out"
    assert main(["--input", str(source), "--output-prefix", str(prefix), "--tokenizer",
                 str(tokenizer_dir), "--no-append-eod", "--quiet"]) == 0
    tokenizer = load_tokenizer(tokenizer_dir)
    for sequences, text in zip(documents_of(f"{prefix}_text_document"), documents):
        ids = numpy.concatenate(sequences)
        assert tokenizer.eod not in ids
        assert tokenizer.detokenize(ids) == normalize_text(text)


def test_empty_records_and_blank_lines_are_skipped_and_counted(tmp_path, tokenizer_dir):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "first"}\n\n{"text": "   "}\n{"text": "second"}\n')
    prefix = tmp_path / "out"
    assert main(["--input", str(source), "--output-prefix", str(prefix), "--tokenizer",
                 str(tokenizer_dir), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out_summary.json").read_text())
    assert (summary["documents"], summary["empty_records"], summary["blank_lines"]) == (2, 1, 1)
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = [tokenizer.detokenize(numpy.concatenate(d)[:-1])
             for d in documents_of(f"{prefix}_text_document")]
    assert texts == ["first", "second"]


def test_errors_replace_substitutes_invalid_bytes(tmp_path, tokenizer_dir):
    source = tmp_path / "in.txt"
    source.write_bytes(b"good line\nbad \xff byte\n")
    prefix = tmp_path / "out"
    assert main(["--input", str(source), "--output-prefix", str(prefix), "--tokenizer",
                 str(tokenizer_dir), "--errors", "replace", "--quiet"]) == 0
    tokenizer = load_tokenizer(tokenizer_dir)
    (doc,) = documents_of(f"{prefix}_text_document")
    assert tokenizer.detokenize(numpy.concatenate(doc)[:-1]) == "good line\nbad \ufffd byte"
    summary = json.loads((tmp_path / "out_summary.json").read_text())
    assert summary["lines_with_replacements"] == 1


def test_trained_tokenizer_is_saved_and_round_trips(tmp_path, documents, write_jsonl):
    source = write_jsonl(tmp_path / "in.jsonl", documents * 5)
    prefix = tmp_path / "out"
    assert main(["--input", str(source), "--output-prefix", str(prefix), "--train-tokenizer",
                 "--vocab-size", "300", "--quiet"]) == 0
    tokenizer = load_tokenizer(tmp_path / "out_tokenizer")
    assert tokenizer.vocab_size <= 300
    decoded = [tokenizer.detokenize(numpy.concatenate(d)[:-1])
               for d in documents_of(f"{prefix}_text_document")]
    assert decoded == [normalize_text(d) for d in documents * 5]


def test_overwrite_replaces_outputs(tmp_path, write_jsonl, tokenizer_dir):
    prefix = tmp_path / "out"
    args = ["--output-prefix", str(prefix), "--tokenizer", str(tokenizer_dir), "--quiet"]
    assert main(["--input", str(write_jsonl(tmp_path / "a.jsonl", ["one", "two"]))] + args) == 0
    source = write_jsonl(tmp_path / "b.jsonl", ["three"])
    assert main(["--input", str(source), "--overwrite"] + args) == 0
    assert len(documents_of(f"{prefix}_text_document")) == 1


def install_punkt_tab(root, params) -> None:
    """Lay out ``params`` the way nltk's punkt_tab English model is installed."""
    from nltk.tabdata import TabEncoder

    encode = TabEncoder()
    model = root / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    (model / "collocations.tab").write_text(encode.tups2tab(params.collocations))
    (model / "sent_starters.txt").write_text(encode.set2txt(params.sent_starters))
    (model / "abbrev_types.txt").write_text(encode.set2txt(params.abbrev_types))
    (model / "ortho_context.tab").write_text(encode.ivdict2tab(params.ortho_context))


def test_sentence_splitter_sources(tmp_path, monkeypatch, documents, write_jsonl, tokenizer_dir):
    import nltk.data

    source = write_jsonl(tmp_path / "in.jsonl", documents)
    common = ["--input", str(source), "--tokenizer", str(tokenizer_dir), "--split-sentences",
              "--quiet"]
    # 1. Nothing installed: Punkt is trained on the input and saved next to the output.
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no_nltk_data")])
    assert main(common + ["--output-prefix", str(tmp_path / "trained")]) == 0
    saved = tmp_path / "trained_punkt.json"
    first = json.loads((tmp_path / "trained_summary.json").read_text())
    assert first["sentence_splitter"].startswith("Punkt trained on the first")

    # 2. Reusing the saved parameters writes no new ones and splits identically.
    assert main(common + ["--output-prefix", str(tmp_path / "reused"), "--punkt",
                          str(saved)]) == 0
    assert not (tmp_path / "reused_punkt.json").exists()
    assert (tmp_path / "reused_text_sentence.idx").read_bytes() == (
        tmp_path / "trained_text_sentence.idx").read_bytes()

    # 3. An installed punkt_tab model is used when present (read as tables, not pickles).
    params = load_params(saved)
    params.abbrev_types.discard("dr")
    install_punkt_tab(tmp_path / "nltk_data", params)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    assert main(common + ["--output-prefix", str(tmp_path / "installed")]) == 0
    summary = json.loads((tmp_path / "installed_summary.json").read_text())
    assert summary["sentence_splitter"] == "installed nltk punkt_tab (english)"
    assert not (tmp_path / "installed_punkt.json").exists()
    first_doc = documents_of(f"{tmp_path}/installed_text_sentence")[0]
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.detokenize(first_doc[0]) == "Dr. "  # the installed model lacks "dr"


def test_split_string_counts_sequences(tmp_path, documents, write_jsonl, tokenizer_dir):
    from megatron_cod.data.pipeline import PreprocessConfig, preprocess

    source = write_jsonl(tmp_path / "in.jsonl", documents)
    for split_sentences in (False, True):
        config = PreprocessConfig(inputs=(str(source),), output_prefix=str(tmp_path / "out"),
                                  tokenizer=str(tokenizer_dir), split_sentences=split_sentences,
                                  split_documents=(5, 2, 1), overwrite=True,
                                  show_progress=False)
        summary = preprocess(config)
        written = IndexedDataset(config.data_prefix("text"))
        bounds = written.document_indices.tolist()
        del written
        assert summary.split == f"{bounds[5]},{bounds[7] - bounds[5]},{bounds[8] - bounds[7]}"
        assert (summary.split == "5,2,1") == (not split_sentences)


def test_progress_and_summary_are_shown(tmp_path, capsys, documents, write_jsonl,
                                        tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", documents)
    assert main(["--input", str(source), "--output-prefix", str(tmp_path / "out"),
                 "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr()
    assert "docs/s" in out.err and "tok/s" in out.err
    summary = json.loads((tmp_path / "out_summary.json").read_text())
    lines = out.out.splitlines()
    assert re.fullmatch(rf"documents\s+{summary['documents']}", lines[0])
    assert re.fullmatch(rf"tokens\s+{summary['tokens']:,}", lines[2])
    assert "docs/s" in out.out and "tokens/s" in out.out
