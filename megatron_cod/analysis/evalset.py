"""Evaluation batches with their unperturbed layer inputs, computed once and shared by all metrics.

One forward per batch captures h_0..h_L and the baseline loss; every metric starts its perturbed
forwards from these cached inputs. Batches are kept in memory while their states fit in
``cache_bytes`` (the first ones, which every metric visits); later batches are recomputed when a
second pass needs them. Token ids and states live on the model's device.

The baseline output distribution (``Batch.reference``, for the metrics that compare distributions)
is built on first use from the baseline forward's own log-probabilities and kept for the most
recent batch only: the metrics that need it visit a batch together, so it is never recomputed
in a pass and never held for more than one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.lm_loss import Reference, log_probs, loss_count, row_loss_sums


@dataclass(frozen=True)
class Batch:
    """One batch: token ids [b, s], the adapter's batch state, h_0..h_L and per-row baseline loss."""

    input_ids: torch.Tensor
    ctx: Any
    states: list[torch.Tensor]
    row_loss_sums: torch.Tensor
    reference_source: Callable[[], Reference] = field(repr=False, compare=False)

    def reference(self) -> Reference:
        """The unperturbed model's output distribution on these rows."""
        return self.reference_source()

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def loss_sum(self) -> float:
        return float(self.row_loss_sums.sum())

    @property
    def loss_count(self) -> int:
        return loss_count(self.input_ids)


class EvalSet:
    """Sequences [n, s] cut into batches; batch i covers sequences [i*b, (i+1)*b)."""

    def __init__(
        self, stack: LayerStack, input_ids: torch.Tensor, batch_size: int, cache_bytes: int = 1 << 30
    ) -> None:
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
            raise ValueError("input_ids must be [num_sequences >= 1, seq_length >= 2]")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if int(input_ids.max()) >= stack.vocab_size or int(input_ids.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {stack.vocab_size}) for this model")
        self.stack = stack
        self.input_ids = input_ids.to(stack.device)
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._cache: dict[int, Batch] = {}
        self.forwards_run = 0
        self.sequences_forwarded = 0  # sequences through the baseline forward (recomputations included)
        self.forward_seconds = 0.0
        # (batch index, the baseline's log-probs or the Reference built from them): the latest batch's
        self._output: tuple[int, torch.Tensor | Reference] | None = None
        self.references_built = 0  # heads run only to rebuild a reference (counted as work)

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_length(self) -> int:
        return self.input_ids.shape[1]

    def limit(self, max_sequences: int | None) -> int:
        """Number of sequences a metric uses given its optional cap."""
        return self.num_sequences if max_sequences is None else min(max_sequences, self.num_sequences)

    def num_batches(self, start: int = 0, stop: int | None = None) -> int:
        stop = self.num_sequences if stop is None else stop
        return len(range(start // self.batch_size, -(-stop // self.batch_size)))

    def _full_batch(self, index: int) -> Batch:
        if index in self._cache:
            return self._cache[index]
        began = time.perf_counter()
        ids = self.input_ids[index * self.batch_size : (index + 1) * self.batch_size]
        with torch.no_grad():
            ctx = self.stack.prepare(ids)
            states = [h.detach() for h in self.stack.capture_states(ids, ctx)]
            output = log_probs(self.stack.head(states[-1]))
            losses = row_loss_sums(output, ids)
        self._output = (index, output)
        self.forwards_run += 1
        self.sequences_forwarded += ids.shape[0]
        self.forward_seconds += time.perf_counter() - began
        batch = Batch(ids, ctx, states, losses, lambda: self._reference(index))
        size = sum(h.numel() * h.element_size() for h in states)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = batch
            self._cached_bytes += size
        return batch

    def _reference(self, index: int) -> Reference:
        if self._output is None or self._output[0] != index:
            batch = self._full_batch(index)  # runs the forward, keeping its log-probs, unless cached
            if self._output is None or self._output[0] != index:  # cached: run its head again
                with torch.no_grad():
                    self._output = (index, log_probs(self.stack.head(batch.states[-1])))
                self.references_built += batch.input_ids.shape[0]
        output = self._output[1]
        if not isinstance(output, Reference):
            with torch.no_grad():
                output = Reference.from_log_probs(output)
            self._output = (index, output)
        return output

    def _reference_rows(self, index: int, lo: int, hi: int) -> Reference:
        return self._reference(index).rows(lo, hi)

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Batches covering sequences [start, stop); edge batches are cut to that range."""
        stop = self.num_sequences if stop is None else stop
        if not 0 <= start < stop <= self.num_sequences:
            raise ValueError(f"invalid sequence range [{start}, {stop}) of {self.num_sequences}")
        for index in range(start // self.batch_size, -(-stop // self.batch_size)):
            batch = self._full_batch(index)
            lo = max(start - index * self.batch_size, 0)
            hi = min(stop - index * self.batch_size, batch.input_ids.shape[0])
            if (lo, hi) == (0, batch.input_ids.shape[0]):
                yield batch
            else:
                ids = batch.input_ids[lo:hi]
                yield Batch(
                    ids,
                    self.stack.prepare(ids),
                    [h[lo:hi] for h in batch.states],
                    batch.row_loss_sums[lo:hi],
                    partial(self._reference_rows, index, lo, hi),
                )

    def baseline_loss(self, start: int = 0, stop: int | None = None) -> float:
        """Mean next-token loss of the unperturbed model over sequences [start, stop)."""
        total, count = 0.0, 0
        for batch in self.batches(start, stop):
            total += batch.loss_sum
            count += batch.loss_count
        return total / count
