"""Evaluation batches with their unperturbed layer inputs, computed once and shared by all metrics.

One forward per batch captures h_0..h_L and the baseline loss; every metric starts its perturbed
forwards from these cached inputs. When the whole set of states fits in ``cache_bytes`` they are
kept in memory, so the ``all`` command runs the baseline forward once instead of once per metric.
"""

from __future__ import annotations

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
        self.input_ids = input_ids
        self.batch_size = batch_size
        n, s = input_ids.shape
        state_bytes = n * s * stack.hidden_size * (stack.num_layers + 1) * 4
        self._cache: dict[int, Batch] | None = {} if state_bytes <= cache_bytes else None
        self.forwards_run = 0

    @property
    def caches_states(self) -> bool:
        """Whether layer inputs are kept in memory after their first forward."""
        return self._cache is not None

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
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        ids = self.input_ids[index * self.batch_size : (index + 1) * self.batch_size]
        with torch.no_grad():
            ctx = self.stack.prepare(ids)
            states = [h.detach() for h in self.stack.capture_states(ids, ctx)]
            losses = row_loss_sums(log_probs(self.stack.head(states[-1])), ids)
        self.forwards_run += 1
        batch = Batch(ids, ctx, states, losses)
        if self._cache is not None:
            self._cache[index] = batch
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
