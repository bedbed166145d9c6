"""Adaptive sampling: feed evaluation batches to metric accumulators until their scores are resolved.

Each metric is an ``Accumulator`` over a range of sequences: it takes batches (the shared
baseline forward's cached layer inputs), keeps per-sequence sums and reports, per group of the
scores it is judged by, the largest standard error. ``feed`` walks the batches once for a whole
group of accumulators, so one baseline forward per batch serves every metric; an accumulator
leaves the group when it has ``max_samples`` sequences, or at least ``min_samples`` and every
group's standard error at or below its target.

Targets are absolute, in each score's own units. ``--target-se X`` sets one target for every
score; without it each score group has the documented default in its accumulator's ``targets``
(README, "Depth analysis"): 0.01 for loss ratios, relative loss changes, similarities and KLs in
nats, looser where a score's scale makes 0.01 far finer than its differences of interest.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter

# Work units, per sequence: a decoder-layer forward, a head (final norm + unembedding +
# log-softmax + loss), a comparison of two output distributions (KL + top-1 agreement, given the
# reference's probabilities), one layer's update of the usefulness least-squares fit and a
# vector-Jacobian product through one layer.
WORK_UNITS = ("layer", "head", "compare", "fit", "vjp")


@dataclass(frozen=True)
class SamplingConfig:
    """When a metric may stop before its cap.

    Neither ``adaptive`` nor ``target_se`` (the default): every sequence up to each metric's cap.
    ``target_se``: stop once every watched score's standard error is at or below it.
    ``adaptive`` alone: stop once each is at or below its score group's documented default target.
    """

    adaptive: bool = False
    target_se: float | None = None
    min_samples: int = 2

    def __post_init__(self) -> None:
        if self.target_se is not None and not self.target_se > 0:
            raise ValueError("target standard error must be > 0")
        if self.min_samples < 2:
            raise ValueError("min_samples must be >= 2 (a standard error needs two sequences)")

    @property
    def stops_early(self) -> bool:
        return self.adaptive or self.target_se is not None

    def target(self, default: float) -> float:
        """The target for a score group whose documented default is ``default``."""
        return default if self.target_se is None else self.target_se


class Accumulator(ABC):
    """Sequences [first, first + cap) in order; ``add`` gets consecutive slices of them."""

    name: str = ""
    # Most sequences per ``add`` (None: a whole batch); small for costly metrics so they can stop early.
    chunk: int | None = None
    # Overrides SamplingConfig.min_samples for this metric.
    min_samples: int | None = None
    # Default target standard error of each group of watched scores, in the scores' units; an
    # accumulator without targets uses every sequence it may.
    targets: ClassVar[dict[str, float]] = {}

    def __init__(self, first: int, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"{self.name or 'metric'} needs at least one sequence")
        self.first = first
        self.cap = cap
        self.sequences = 0
        self.work: Counter[str] = Counter()
        self.seconds = 0.0  # time spent in ``add``

    @abstractmethod
    def add(self, batch: Batch) -> None:
        """Take one batch of the next sequences."""

    def stderrs(self) -> dict[str, float]:
        """Largest standard error in each group of watched scores (the keys of ``targets``)."""
        return {}

    def effective_targets(self, sampling: SamplingConfig) -> dict[str, float]:
        """The target of each watched score group under ``sampling`` (empty: no early stop)."""
        if not sampling.stops_early:
            return {}
        return {group: sampling.target(default) for group, default in self.targets.items()}

    def count(self, batch: Batch, **units: int) -> None:
        """Record ``units`` of work per sequence of ``batch``."""
        rows = batch.input_ids.shape[0]
        for unit, per_sequence in units.items():
            self.work[unit] += per_sequence * rows

    def done(self, sampling: SamplingConfig) -> bool:
        if self.sequences >= self.cap:
            return True
        minimum = sampling.min_samples if self.min_samples is None else self.min_samples
        targets = self.effective_targets(sampling)
        if not targets or self.sequences < minimum:
            return False
        stderrs = self.stderrs()
        return all(math.isfinite(stderrs[g]) and stderrs[g] <= target for g, target in targets.items())


def feed(
    evalset: EvalSet,
    accumulators: list[Accumulator],
    sampling: SamplingConfig | None = None,
    progress: ProgressReporter = NO_PROGRESS,
    label: str = "metrics",
) -> None:
    """Give every accumulator batches of its sequences until it is done."""
    sampling = sampling or SamplingConfig()
    active = [a for a in accumulators if not a.done(sampling)]
    if not active:
        return
    size = evalset.batch_size
    first_batch = min(a.first for a in active) // size
    last_batch = -(-max(a.first + a.cap for a in active) // size)
    with progress.task(label, last_batch - first_batch) as advance:
        for index in range(first_batch, last_batch):
            lo, hi = index * size, min((index + 1) * size, evalset.num_sequences)
            for acc in active:
                # this accumulator's next sequences, clipped to the batch and its own range
                stop = min(hi, acc.first + acc.cap)
                while not acc.done(sampling) and (start := max(lo, acc.first + acc.sequences)) < stop:
                    end = stop if acc.chunk is None else min(stop, start + acc.chunk)
                    for batch in evalset.batches(start, end):
                        began = time.perf_counter()
                        acc.add(batch)
                        acc.seconds += time.perf_counter() - began
                        acc.sequences += batch.input_ids.shape[0]
            advance()
            active = [a for a in active if not a.done(sampling)]
            if not active:
                return
