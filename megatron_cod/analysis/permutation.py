"""Permutation score: how much the loss changes when two layers trade places.

P(l1, l2) = |L_0 - L_swap| / L_0 with layer module l2 run at position l1 and l1 at l2. Global
reductions as the paper's compute_layer_score.py: the mean over evaluated pairs, the sum over
L(L-1)/2 (equal to the mean when all pairs are evaluated), and a depth-weighted score (per layer:
sum of P * decay^layer over the pairs containing it, divided by their count; then the mean over
layers that appear in some pair). Each swapped forward starts at l1 from its cached input.
Each P has a standard error over sequences (jackknife of the per-sequence loss sums).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack, swap_layers
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.lm_loss import log_probs, row_loss_sums
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import Scored, SequenceSums, jackknife

Pair = tuple[int, int]


def parse_pairs(spec: str, num_layers: int) -> list[Pair]:
    """'all', 'adjacent' or a comma list like '0-1,2-5' -> sorted unique pairs (l1 < l2)."""
    spec = spec.strip()
    if spec == "all":
        return [(a, b) for a in range(num_layers) for b in range(a + 1, num_layers)]
    if spec == "adjacent":
        return [(a, a + 1) for a in range(num_layers - 1)]
    pairs = set()
    for item in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", item)
        if match is None:
            raise ValueError(f"bad layer pair {item!r}: expected 'all', 'adjacent' or a list like '0-1,2-5'")
        a, b = sorted((int(match.group(1)), int(match.group(2))))
        if a == b or b >= num_layers:
            raise ValueError(f"bad layer pair {item.strip()!r} for a model with {num_layers} layers")
        pairs.add((a, b))
    return sorted(pairs)


@dataclass(frozen=True)
class PermutationConfig:
    pairs: tuple[Pair, ...] | None = None  # None: all pairs
    decay: float = 0.9
    max_sequences: int | None = None

    def __post_init__(self) -> None:
        if self.pairs is not None and (not self.pairs or any(a >= b or a < 0 for a, b in self.pairs)):
            raise ValueError("pairs must be a non-empty list of (l1, l2) with 0 <= l1 < l2")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")


@dataclass(frozen=True)
class PairScore:
    l1: int
    l2: int
    loss: float
    score: float
    stderr: float = 0.0


@dataclass(frozen=True)
class PermutationResult:
    baseline_loss: float
    num_layers: int
    decay: float
    pairs: list[PairScore]
    num_sequences: int = 0

    def matrix(self) -> np.ndarray:
        """[L, L] with P at (l1, l2), NaN where not evaluated."""
        out = np.full((self.num_layers, self.num_layers), np.nan)
        for p in self.pairs:
            out[p.l1, p.l2] = p.score
        return out

    def global_metrics(self) -> dict[str, float]:
        scores = np.array([p.score for p in self.pairs])
        all_pairs = self.num_layers * (self.num_layers - 1) / 2
        per_layer: dict[int, list[float]] = {}
        for p in self.pairs:
            for layer in (p.l1, p.l2):
                per_layer.setdefault(layer, []).append(p.score * self.decay**layer)
        weighted = float(np.mean([np.mean(v) for v in per_layer.values()]))
        return {
            "permutation_score_mean": float(scores.mean()),
            "permutation_score_normalized": float(scores.sum() / all_pairs),
            "permutation_score_weighted": weighted,
            "num_pairs": float(len(self.pairs)),
        }


def _pair_scores(totals: np.ndarray) -> np.ndarray:
    """|L_0 - L_swap| / L_0 from totals [m, pairs + 1] (swap loss sums, then the baseline's)."""
    return np.abs(totals[:, -1:] - totals[:, :-1]) / totals[:, -1:]


class PermutationAccumulator(Accumulator):
    """Per sequence: the summed loss of every swapped model and of the baseline."""

    name = "permutation"
    targets = {"score": 0.01}  # |L_0 - L_swap| / L_0, a relative loss change

    def __init__(self, stack: LayerStack, pairs: list[Pair], cap: int) -> None:
        super().__init__(0, cap)
        if any(b >= stack.num_layers for _, b in pairs):
            raise ValueError(f"layer pair out of range for a model with {stack.num_layers} layers")
        self.stack = stack
        self.pairs = pairs
        self.losses = SequenceSums()  # [n, pairs + 1]
        self.loss_count = 0

    def add(self, batch: Batch) -> None:
        stack = self.stack
        columns = []
        with torch.no_grad():
            for a, b in self.pairs:
                h = stack.run(batch.states[a], batch.ctx, start=a, overrides=swap_layers(a, b))
                columns.append(row_loss_sums(log_probs(stack.head(h)), batch.input_ids))
        columns.append(batch.row_loss_sums)
        self.losses.add(torch.stack(columns, dim=1))
        self.loss_count += batch.loss_count
        self.count(batch, layer=sum(stack.num_layers - a for a, _ in self.pairs), head=len(self.pairs))

    def _scores(self) -> Scored:
        return jackknife(_pair_scores, self.losses.array())

    def stderrs(self) -> dict[str, float]:
        return {"score": float(self._scores().stderr.max())}

    def result(self, decay: float) -> PermutationResult:
        scores = self._scores()
        totals = self.losses.array().sum(axis=0)
        scored = [
            PairScore(a, b, float(total / self.loss_count), float(value), float(se))
            for (a, b), total, value, se in zip(self.pairs, totals, scores.value, scores.stderr)
        ]
        return PermutationResult(
            baseline_loss=float(totals[-1] / self.loss_count),
            num_layers=self.stack.num_layers,
            decay=decay,
            pairs=scored,
            num_sequences=self.sequences,
        )


def permutation_scores(
    evalset: EvalSet,
    config: PermutationConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> PermutationResult:
    stack = evalset.stack
    pairs = list(config.pairs) if config.pairs is not None else parse_pairs("all", stack.num_layers)
    acc = PermutationAccumulator(stack, pairs, evalset.limit(config.max_sequences))
    feed(evalset, [acc], sampling, progress, "permutation")
    return acc.result(config.decay)
