"""Evaluation batches with their unperturbed layer inputs, computed once and shared by all metrics.

One forward per batch captures h_0..h_L and the baseline loss; every metric starts its perturbed
forwards from these cached inputs. Batches are kept in memory while their states fit in
``cache_bytes`` (the first ones, which every metric visits); later batches are recomputed when a
second pass needs them. Token ids and states live on the model's device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.lm_loss import log_probs, loss_count, row_loss_sums


@dataclass(frozen=True)
class Batch:
    """One batch: token ids [b, s], the adapter's batch state, h_0..h_L and per-row baseline loss."""

    input_ids: torch.Tensor
    ctx: Any
    states: list[torch.Tensor]
    row_loss_sums: torch.Tensor

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
            losses = row_loss_sums(log_probs(self.stack.head(states[-1])), ids)
        self.forwards_run += 1
        self.sequences_forwarded += ids.shape[0]
        self.forward_seconds += time.perf_counter() - began
        batch = Batch(ids, ctx, states, losses)
        size = sum(h.numel() * h.element_size() for h in states)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = batch
            self._cached_bytes += size
        return batch

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
                    ids, self.stack.prepare(ids), [h[lo:hi] for h in batch.states], batch.row_loss_sums[lo:hi]
                )

    def baseline_loss(self, start: int = 0, stop: int | None = None) -> float:
        """Mean next-token loss of the unperturbed model over sequences [start, stop)."""
        total, count = 0.0, 0
        for batch in self.batches(start, stop):
            total += batch.loss_sum
            count += batch.loss_count
        return total / count
