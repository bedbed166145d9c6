"""Preprocessing throughput on the built-in corpus: 1 worker vs 2 workers, side by side.

Each configuration tokenizes the cached Shakespeare corpus (918 documents, ~5 MB) into a
temporary .bin/.idx with the built-in tokenizer, ``--repeats`` times; the median of the
tokenizing phase (read, tokenize, write; what ``--workers`` speeds up) is reported. Both
configurations must write identical bytes. The last line is the best configuration's rate:

    RESULT preprocess_tokens_per_s=<tokens per second>

Usage: python benchmarks/preprocess.py [--repeats 3] [--split-sentences] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

WORKER_COUNTS = (1, 2)


def main() -> None:
    # Imported here, not at the top: worker processes are spawned and re-import this script,
    # and megatron-core (imported by the pipeline) would cost each of them seconds.
    from megatron_cod.data.builtin import ensure_builtin_corpus, ensure_builtin_dataset
    from megatron_cod.data.pipeline import PreprocessConfig, preprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split-sentences", action="store_true")
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args()

    corpus = ensure_builtin_corpus(cache_dir=args.cache_dir)
    dataset = ensure_builtin_dataset(cache_dir=args.cache_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cod-bench-") as tmp:
        outputs = {}
        for workers in WORKER_COUNTS:
            runs = []
            for repeat in range(args.repeats):
                config = PreprocessConfig(
                    inputs=(corpus.path,),
                    output_prefix=f"{tmp}/w{workers}",
                    tokenizer=dataset.tokenizer_path,
                    split_sentences=args.split_sentences,
                    workers=workers,
                    overwrite=True,
                    show_progress=False,
                )
                runs.append(preprocess(config))
            level = "sentence" if args.split_sentences else "document"
            prefix = Path(f"{tmp}/w{workers}_text_{level}")
            outputs[workers] = [prefix.with_suffix(s).read_bytes() for s in (".bin", ".idx")]
            rows.append((
                workers,
                statistics.median(r.documents_per_s for r in runs),
                statistics.median(r.tokens_per_s for r in runs),
                statistics.median(r.tokenize_seconds for r in runs),
                runs[0],
            ))
        if any(out != outputs[WORKER_COUNTS[0]] for out in outputs.values()):
            raise SystemExit("outputs differ between worker counts")

    first = rows[0][4]
    print(f"corpus: {first.documents} documents, {first.tokens:,} tokens, "
          f"{first.input_bytes / 1e6:.1f} MB; split sentences: {args.split_sentences}; "
          f"median of {args.repeats}")
    print(f"{'workers':>7}  {'docs/s':>10}  {'tokens/s':>12}  {'seconds':>8}  speedup")
    base = rows[0][2]
    for workers, docs, tokens, seconds, _ in rows:
        print(f"{workers:>7}  {docs:>10,.0f}  {tokens:>12,.0f}  {seconds:>8.2f}  "
              f"{tokens / base:.2f}x")
    best = max(rows, key=lambda row: row[2])
    print(f"best: {best[0]} worker(s)")
    print(f"RESULT preprocess_tokens_per_s={best[2]:.0f}")


if __name__ == "__main__":
    main()
