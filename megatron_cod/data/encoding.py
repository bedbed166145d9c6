"""Record text -> token ids, in this process or in a pool of worker processes.

A document is one array of token ids plus the lengths of its sequences: one sequence per
sentence when splitting (Megatron's ``--split-sentences`` layout), else one for the document.
The end-of-document id is appended to the last sequence.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy

from megatron_cod.data.tokenizer import CodTokenizer

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktParameters

EncodedDocument = tuple[numpy.ndarray, list[int]]
"""Token ids of one document and the lengths of its sequences (they sum to the ids' length)."""


class DocumentEncoder:
    """Tokenizes the texts of a record, one document per key."""

    def __init__(
        self,
        tokenizer: CodTokenizer,
        punkt_params: PunktParameters | None,
        append_eod: bool,
        dtype: type,
    ) -> None:
        self.tokenizer = tokenizer
        self.punkt_params = punkt_params
        self.append_eod = append_eod
        self.dtype = dtype
        self._splitter = None
        if punkt_params is not None:
            # Imported only when splitting: importing nltk costs a worker about 1.5 s.
            from megatron_cod.data.sentences import SentenceSplitter

            self._splitter = SentenceSplitter(punkt_params)

    def __getstate__(self) -> dict:
        params = None
        if self.punkt_params is not None:
            from megatron_cod.data.sentences import params_to_json

            params = params_to_json(self.punkt_params)
        return {
            "tokenizer": self.tokenizer,
            "punkt": params,
            "append_eod": self.append_eod,
            "dtype": numpy.dtype(self.dtype).name,
        }

    def __setstate__(self, state: dict) -> None:
        params = None
        if state["punkt"] is not None:
            from megatron_cod.data.sentences import params_from_json

            params = params_from_json(state["punkt"])
        dtype = getattr(numpy, state["dtype"])
        type(self).__init__(self, state["tokenizer"], params, state["append_eod"], dtype)

    def encode(self, texts: Sequence[str]) -> tuple[EncodedDocument, ...]:
        return tuple(self._encode_text(text) for text in texts)

    def _encode_text(self, text: str) -> EncodedDocument:
        pieces = self._splitter.split(text) if self._splitter is not None else [text]
        sequences = [self.tokenizer.tokenize(piece) for piece in pieces]
        if self.append_eod:
            sequences[-1].append(self.tokenizer.eod)
        lengths = [len(s) for s in sequences]
        flat = sequences[0] if len(sequences) == 1 else list(itertools.chain(*sequences))
        return numpy.array(flat, dtype=self.dtype), lengths


_WORKER_ENCODER: DocumentEncoder | None = None


def _init_worker(encoder: DocumentEncoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder


def _encode_chunk(chunk: Sequence[Sequence[str]]) -> list[tuple[EncodedDocument, ...]]:
    assert _WORKER_ENCODER is not None, "worker not initialised"
    return [_WORKER_ENCODER.encode(texts) for texts in chunk]


@contextmanager
def worker_pool(encoder: DocumentEncoder, workers: int) -> Iterator[Any]:
    """The pool of ``workers`` spawned encoder processes (None for one worker); closed on exit,
    terminated on an error or Ctrl-C.

    Workers are spawned, not forked (the parent runs threads, e.g. the progress display), and
    a spawned worker re-imports the caller's main module: scripts that use several workers
    should keep heavy imports inside functions. Start the pool before anything is written: the
    parent ignores Ctrl-C while the workers start (seconds on a busy machine).
    """
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    # Ctrl-C reaches the whole process group; only the parent handles it (and stops the pool).
    # Workers start with SIGINT ignored, inherited through exec, so none prints a traceback even
    # when interrupted while still importing.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        pool = context.Pool(workers, initializer=_init_worker, initargs=(encoder,))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def encode_chunks(
    encoder: DocumentEncoder, chunks: Iterable[Sequence[Sequence[str]]], workers: int, pool: Any = None
) -> Iterator[list[tuple[EncodedDocument, ...]]]:
    """Encoded chunks in input order: in this process, or on ``pool`` (see worker_pool) with at most
    ``2 * workers`` chunks in flight so that reading never runs ahead of encoding by more than that
    (inputs can be many GB)."""
    if pool is None:
        for chunk in chunks:
            yield [encoder.encode(texts) for texts in chunk]
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
        if len(pending) >= 2 * workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
