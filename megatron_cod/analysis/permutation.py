"""Permutation score: how much the loss changes when two layers trade places.

P(l1, l2) = |L_0 - L_swap| / L_0 with layer module l2 run at position l1 and l1 at l2. Global
reductions as the paper's compute_layer_score.py: the mean over evaluated pairs, the sum over
L(L-1)/2 (equal to the mean when all pairs are evaluated), and a depth-weighted score (per layer:
sum of P * decay^layer over the pairs containing it, divided by their count; then the mean over
layers that appear in some pair). Each swapped forward starts at l1 from its cached input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.adapter import swap_layers
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.lm_loss import loss_sum_from
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter

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


@dataclass(frozen=True)
class PermutationResult:
    baseline_loss: float
    num_layers: int
    decay: float
    pairs: list[PairScore]

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


def permutation_scores(
    evalset: EvalSet, config: PermutationConfig, progress: ProgressReporter = NO_PROGRESS
) -> PermutationResult:
    stack = evalset.stack
    num_layers = stack.num_layers
    pairs = list(config.pairs) if config.pairs is not None else parse_pairs("all", num_layers)
    if any(b >= num_layers for _, b in pairs):
        raise ValueError(f"layer pair out of range for a model with {num_layers} layers")
    stop = evalset.limit(config.max_sequences)
    loss_sums = np.zeros(len(pairs))
    count = 0
    with torch.no_grad(), progress.task("permutation", evalset.num_batches(0, stop) * len(pairs)) as advance:
        for batch in evalset.batches(0, stop):
            count += batch.loss_count
            for i, (a, b) in enumerate(pairs):
                h = stack.run(batch.states[a], batch.ctx, start=a, overrides=swap_layers(a, b))
                loss_sums[i] += loss_sum_from(stack, h, batch.input_ids)
                advance()
    baseline = evalset.baseline_loss(0, stop)
    scored = []
    for (a, b), total in zip(pairs, loss_sums):
        loss = float(total / count)
        scored.append(PairScore(a, b, loss, abs(baseline - loss) / baseline))
    return PermutationResult(baseline_loss=baseline, num_layers=num_layers, decay=config.decay, pairs=scored)
