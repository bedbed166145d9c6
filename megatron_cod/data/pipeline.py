"""Preprocessing run: input records -> (sentences) -> token ids -> Megatron ``.bin/.idx``.

Output names follow Megatron-LM's ``tools/preprocess_data.py``: for each json key,
``{output_prefix}_{key}_document`` (or ``_sentence`` with sentence splitting) is the data prefix
to train on. Next to it: ``{output_prefix}_summary.json`` and, when trained here,
``{output_prefix}_tokenizer/`` and ``{output_prefix}_punkt.json``.

With sentence splitting each sentence is one sequence and documents are marked in the index, as
Megatron-LM does for BERT/T5-style data. megatron-core's GPTDataset treats every sequence as a
unit and shuffles them, so GPT training should use document-level output (the default).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy

from megatron_cod.data.encoding import DocumentEncoder, encode_chunks, worker_pool
from megatron_cod.data.errors import DataError
from megatron_cod.data.indexed_output import DTYPES, choose_dtype, open_builder
from megatron_cod.data.inputs import (
    ERROR_MODES,
    TXT_UNITS,
    InputReader,
    expand_inputs,
    total_input_bytes,
)
from megatron_cod.data.output_files import OutputFiles
from megatron_cod.data.progress import ThroughputProgress
from megatron_cod.data.sentences import (
    DEFAULT_SAMPLE_CHARS,
    installed_punkt_params,
    load_params,
    save_params,
    train_punkt,
)
from megatron_cod.data.tokenizer import load_tokenizer, train_bpe_tokenizer

_CHUNK_CHARS = 256 * 1024
_CHUNK_RECORDS = 256


@dataclass(frozen=True)
class PreprocessConfig:
    """What to read, how to tokenize it, and where to write; validated at construction.

    ``split_documents``: when the input holds train, valid and test documents in that order,
    their counts; the summary then gives megatron's split string for the output, counted in the
    sequences written (documents, or sentences with ``split_sentences``).
    """

    inputs: tuple[str, ...]
    output_prefix: str
    json_keys: tuple[str, ...] = ("text",)
    tokenizer: str | None = None
    train_tokenizer: bool = False
    vocab_size: int | None = None
    split_sentences: bool = False
    punkt: str | None = None
    punkt_sample_chars: int = DEFAULT_SAMPLE_CHARS
    workers: int = 1
    append_eod: bool = True
    overwrite: bool = False
    errors: str = "strict"
    txt_unit: str = "file"
    dtype: str = "auto"
    split_documents: tuple[int, int, int] | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError("no input given (use --input FILE|DIR|GLOB)")
        if not self.output_prefix:
            raise DataError("no output prefix given (use --output-prefix)")
        if not self.json_keys or any(not k for k in self.json_keys):
            raise DataError("--json-keys needs non-empty key names")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise DataError("--json-keys names a key twice")
        if (self.tokenizer is None) == (not self.train_tokenizer):
            raise DataError("give exactly one of --tokenizer PATH or --train-tokenizer")
        if self.train_tokenizer and self.vocab_size is None:
            raise DataError("--train-tokenizer needs --vocab-size N")
        if not self.train_tokenizer and self.vocab_size is not None:
            raise DataError("--vocab-size only applies with --train-tokenizer")
        if self.punkt is not None and not self.split_sentences:
            raise DataError("--punkt only applies with --split-sentences")
        if self.workers < 1:
            raise DataError(f"--workers must be at least 1, got {self.workers}")
        if self.punkt_sample_chars < 1:
            raise DataError("the sentence-splitter sample must hold at least one character")
        if self.errors not in ERROR_MODES:
            raise DataError(f"--errors must be one of {', '.join(ERROR_MODES)}")
        if self.txt_unit not in TXT_UNITS:
            raise DataError(f"--txt-unit must be one of {', '.join(TXT_UNITS)}")
        if self.dtype not in DTYPES:
            raise DataError(f"--dtype must be one of {', '.join(DTYPES)}")
        if self.split_documents is not None and (
            len(self.split_documents) != 3 or min(self.split_documents) < 0
        ):
            raise DataError("split_documents needs three non-negative document counts")
        if self.split_documents is not None and len(self.json_keys) != 1:
            raise DataError("split_documents needs a single json key")

    @property
    def level(self) -> str:
        return "sentence" if self.split_sentences else "document"

    def data_prefix(self, key: str) -> str:
        """The Megatron data prefix written for ``key``."""
        return f"{self.output_prefix}_{key}_{self.level}"

    @property
    def summary_path(self) -> Path:
        return Path(f"{self.output_prefix}_summary.json")

    @property
    def tokenizer_dir(self) -> Path:
        """Where a tokenizer trained by this run is saved."""
        return Path(f"{self.output_prefix}_tokenizer")

    @property
    def punkt_path(self) -> Path:
        """Where sentence-splitter parameters trained by this run are saved."""
        return Path(f"{self.output_prefix}_punkt.json")


@dataclass
class PreprocessSummary:
    """What a run read and wrote; saved as ``{output_prefix}_summary.json``.

    ``tokens`` counts the appended end-of-document ids too. The rates measure the tokenizing
    phase (read, split, tokenize, write: what ``workers`` speeds up); ``seconds`` is the whole
    run, tokenizer or Punkt training included.
    """

    inputs: list[str]
    outputs: dict[str, str]
    tokenizer: str
    vocab_size: int
    dtype: str
    sentence_splitter: str | None
    documents: int
    sentences: int | None
    tokens: int
    empty_records: int
    blank_lines: int
    lines_with_replacements: int
    input_bytes: int
    seconds: float
    tokenize_seconds: float
    documents_per_s: float
    tokens_per_s: float
    workers: int
    append_eod: bool
    split: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        rows = [
            ("documents", f"{self.documents:,}"),
            ("sentences", "-" if self.sentences is None else f"{self.sentences:,}"),
            ("tokens", f"{self.tokens:,}"),
            ("empty records", f"{self.empty_records:,} (skipped)"),
            ("blank lines", f"{self.blank_lines:,} (skipped)"),
        ]
        if self.lines_with_replacements:
            rows.append(("lines with U+FFFD", f"{self.lines_with_replacements:,}"))
        rates = f"{self.documents_per_s:,.0f} docs/s, {self.tokens_per_s:,.0f} tokens/s"
        rows += [
            ("throughput", f"{rates} ({self.workers} worker(s), {self.tokenize_seconds:.2f} s)"),
            ("total time", f"{self.seconds:.2f} s"),
            ("tokenizer", f"{self.tokenizer} (vocab {self.vocab_size:,}, {self.dtype})"),
        ]
        if self.sentence_splitter:
            rows.append(("sentence splitter", self.sentence_splitter))
        for key, prefix in self.outputs.items():
            rows.append((f"data prefix [{key}]", prefix))
        if self.split:
            rows.append(("split", self.split))
        rows += [(f"wrote {name}", path) for name, path in self.files.items()]
        width = max(len(name) for name, _ in rows)
        return [f"{name:<{width}}  {value}" for name, value in rows]


def preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Run the whole pipeline; outputs appear only when everything succeeded."""
    start = time.monotonic()
    paths = expand_inputs(config.inputs)

    def reader() -> InputReader:
        return InputReader(paths, config.json_keys, config.errors, config.txt_unit)

    reader()  # checks the key / input-type combination before anything is written
    finals: list[Path] = [config.summary_path]
    for key in config.json_keys:
        finals += [Path(config.data_prefix(key) + ".bin"), Path(config.data_prefix(key) + ".idx")]
    if config.train_tokenizer:
        finals.append(config.tokenizer_dir)
    if config.split_sentences and config.punkt is None:
        finals.append(config.punkt_path)
    outputs = OutputFiles(finals, overwrite=config.overwrite)
    with outputs:
        files: dict[str, str] = {"summary": str(config.summary_path)}
        if config.train_tokenizer:
            assert config.vocab_size is not None  # validated with --train-tokenizer
            tokenizer = train_bpe_tokenizer(_texts(reader(), paths), config.vocab_size)
            tokenizer.save(outputs.temp(config.tokenizer_dir))
            tokenizer_name = str(config.tokenizer_dir)
            files["tokenizer"] = tokenizer_name
        else:
            assert config.tokenizer is not None  # validated: --tokenizer or --train-tokenizer
            tokenizer = load_tokenizer(config.tokenizer)
            tokenizer_name = str(config.tokenizer)
        dtype = choose_dtype(tokenizer.vocab_size, config.dtype, tokenizer_name)

        punkt_params, splitter_name = None, None
        if config.split_sentences:
            punkt_params, splitter_name, trained = _sentence_params(config, paths, reader, outputs)
            if trained:
                files["sentence splitter"] = str(config.punkt_path)

        encoder = DocumentEncoder(tokenizer, punkt_params, config.append_eod, dtype)
        tokenize_start = time.monotonic()
        # the workers start before any output file opens, so an interrupt that finds files being
        # written finds the parent listening for it
        with worker_pool(encoder, config.workers) as pool:
            counts = _write_documents(config, paths, reader(), encoder, outputs, dtype, pool)
        if counts["documents"] == 0:
            raise DataError(_empty_input_message(paths))
        tokenize_seconds = time.monotonic() - tokenize_start
        seconds = time.monotonic() - start
        summary = PreprocessSummary(
            inputs=[str(p) for p in paths],
            outputs={key: config.data_prefix(key) for key in config.json_keys},
            tokenizer=tokenizer_name,
            vocab_size=tokenizer.vocab_size,
            dtype=numpy.dtype(dtype).name,
            sentence_splitter=splitter_name,
            documents=counts["documents"],
            sentences=counts["sentences"] if config.split_sentences else None,
            tokens=counts["tokens"],
            empty_records=counts["empty_records"],
            blank_lines=counts["blank_lines"],
            lines_with_replacements=counts["lines_with_replacements"],
            input_bytes=counts["input_bytes"],
            seconds=round(seconds, 3),
            tokenize_seconds=round(tokenize_seconds, 3),
            documents_per_s=round(counts["documents"] / tokenize_seconds, 1),
            tokens_per_s=round(counts["tokens"] / tokenize_seconds, 1),
            workers=config.workers,
            append_eod=config.append_eod,
            split=counts["split"],
            files=files,
        )
        outputs.temp(config.summary_path).write_text(summary.to_json(), encoding="utf-8")
        outputs.commit()
    return summary


def _texts(reader: InputReader, paths: Sequence[Path]) -> Iterator[str]:
    """All record texts, for training; empty input fails here, naming the files."""
    texts = (text for record in reader for text in record.texts)
    first = next(texts, None)
    if first is None:
        raise DataError(_empty_input_message(paths))
    return itertools.chain([first], texts)


def _sentence_params(config: PreprocessConfig, paths, reader, outputs: OutputFiles):
    """Punkt parameters, a description of where they came from, and whether they were trained."""
    if config.punkt is not None:
        return load_params(config.punkt), f"saved Punkt parameters ({config.punkt})", False
    installed = installed_punkt_params()
    if installed is not None:
        return installed, "installed nltk punkt_tab (english)", False
    params = train_punkt(_texts(reader(), paths), max_chars=config.punkt_sample_chars)
    save_params(params, outputs.temp(config.punkt_path))
    name = f"Punkt trained on the first {config.punkt_sample_chars:,} characters of the input"
    return params, name, True


def _chunks(reader: InputReader, positions: list[int]) -> Iterator[list[tuple[str, ...]]]:
    """Groups of record texts; ``positions`` receives the input bytes read at each group's end."""
    chunk: list[tuple[str, ...]] = []
    chars = 0
    for record in reader:
        chunk.append(record.texts)
        chars += sum(len(t) for t in record.texts)
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_RECORDS:
            positions.append(reader.bytes_read)
            yield chunk
            chunk, chars = [], 0
    if chunk:
        positions.append(reader.bytes_read)
        yield chunk


class _Counts(TypedDict):
    split: str | None
    documents: int
    sentences: int
    tokens: int
    empty_records: int
    blank_lines: int
    lines_with_replacements: int
    input_bytes: int


def _write_documents(
    config: PreprocessConfig,
    paths: Sequence[Path],
    reader: InputReader,
    encoder: DocumentEncoder,
    outputs: OutputFiles,
    dtype,
    pool: Any = None,
) -> _Counts:
    builders = {
        key: open_builder(outputs.temp(Path(config.data_prefix(key) + ".bin")), dtype)
        for key in config.json_keys
    }
    documents = sentences = tokens = 0
    positions: list[int] = []
    boundaries = _split_boundaries(config.split_documents)
    sequences_at: dict[int, int] = {0: 0}
    try:
        with ThroughputProgress(total_input_bytes(paths), config.show_progress) as progress:
            for encoded_chunk in encode_chunks(encoder, _chunks(reader, positions), config.workers, pool):
                for encoded in encoded_chunk:
                    for key, (ids, lengths) in zip(config.json_keys, encoded):
                        builders[key].add_document(ids, lengths)
                        tokens += len(ids)
                        sentences += len(lengths)
                    documents += 1
                    if documents in boundaries:
                        sequences_at[documents] = sentences
                progress.update(positions.pop(0), documents, tokens)
    finally:
        for builder in builders.values():
            builder.data_file.close()
    for key, builder in builders.items():
        builder.finalize(str(outputs.temp(Path(config.data_prefix(key) + ".idx"))))
    split = None
    if config.split_documents is not None:
        if documents != sum(config.split_documents):
            raise DataError(
                f"{paths[0]}: wrote {documents} documents but the split counts "
                f"{config.split_documents} add up to {sum(config.split_documents)}"
            )
        train, valid, test = config.split_documents
        cuts = [sequences_at[b] for b in (0, train, train + valid, train + valid + test)]
        split = ",".join(str(b - a) for a, b in zip(cuts[:-1], cuts[1:]))
    return {
        "split": split,
        "documents": documents,
        "sentences": sentences,
        "tokens": tokens,
        "empty_records": reader.empty_records,
        "blank_lines": reader.blank_lines,
        "lines_with_replacements": reader.lines_with_replacements,
        "input_bytes": reader.bytes_read,
    }


def _split_boundaries(counts: tuple[int, int, int] | None) -> set[int]:
    if counts is None:
        return set()
    train, valid, test = counts
    return {0, train, train + valid, train + valid + test}


def _empty_input_message(paths: Sequence[Path]) -> str:
    if len(paths) == 1:
        return f"{paths[0]}: input is empty (no non-empty records)"
    shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    return f"inputs are empty (no non-empty records in {len(paths)} files: {shown})"
