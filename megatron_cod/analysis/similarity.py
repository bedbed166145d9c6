"""Representation similarity across depth and the pruning curves it suggests.

- Block Influence (ShortGPT): BI_l = 1 - mean_tokens cos(h_l, h_{l+1}), over all tokens and over
  the last token of each sequence.
- Angular distance (Gromov et al.): d(l, n) = mean arccos(cos(h_l, h_{l+n})) / pi for every block
  of n layers starting at l, over all tokens and over last tokens; an L x L table indexed [l, n-1].
- Pruning curves: loss / perplexity with k layers removed (skipped), in increasing-BI order
  (k = 0..L-1), and with the block of n layers of smallest last-token angular distance removed
  (n = 0..L-1). Each pruned forward starts at the first removed layer from its cached input.
The per-token functions are the telemetry's, so a number means the same thing in both places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.adapter import skip_layers
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.lm_loss import loss_sum_from
from megatron_cod.analysis.progress import NO_PROGRESS, Advance, ProgressReporter
from megatron_cod.telemetry.metrics import block_influence, per_token_angular_distance


@dataclass(frozen=True)
class SimilarityConfig:
    pruning: bool = True
    max_sequences: int | None = None  # for the statistics (one forward each)
    prune_max_sequences: int | None = None  # for the pruned forwards

    def __post_init__(self) -> None:
        for value in (self.max_sequences, self.prune_max_sequences):
            if value is not None and value < 1:
                raise ValueError("sequence caps must be >= 1")


@dataclass(frozen=True)
class PruneStep:
    removed: list[int]
    loss: float

    @property
    def num_removed(self) -> int:
        return len(self.removed)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@dataclass(frozen=True)
class SimilarityResult:
    block_influence: list[float]
    block_influence_last: list[float]
    angular_all: np.ndarray  # [L, L]: d(l, n) at [l, n - 1], NaN where l + n > L
    angular_last: np.ndarray
    pruning_bi: list[PruneStep]
    pruning_angular: list[PruneStep]

    def global_metrics(self) -> dict[str, float]:
        out = {
            "mean_block_influence": float(np.mean(self.block_influence)),
            "mean_block_influence_last": float(np.mean(self.block_influence_last)),
            "mean_angular_distance_n1": float(np.mean(self.angular_all[:, 0])),
        }
        if self.pruning_bi:
            out["prunable_fraction_bi"] = prunable_fraction(self.pruning_bi, len(self.block_influence))
        return out


# A pruned model "keeps" its quality while its loss is within 5% of the unpruned loss.
PRUNE_LOSS_TOLERANCE = 0.05


def prunable_fraction(
    curve: list[PruneStep], num_layers: int, tolerance: float = PRUNE_LOSS_TOLERANCE
) -> float:
    """Largest n/L such that removing the first n layers of the curve, and every prefix before it,
    keeps the loss within (1 + tolerance) x the unpruned loss (curve[0] removes nothing)."""
    limit = curve[0].loss * (1.0 + tolerance)
    kept = 0
    for step in curve[1:]:
        if step.loss > limit:
            break
        kept = step.num_removed
    return kept / num_layers


def bi_removal_order(block_influence: list[float]) -> list[int]:
    """Layers by increasing Block Influence (least influential first; ties by index)."""
    return sorted(range(len(block_influence)), key=lambda layer: (block_influence[layer], layer))


def angular_blocks(angular: np.ndarray) -> list[list[int]]:
    """For n = 1..L-1 the block l*..l*+n-1 with the smallest d(l*, n) (ties: the earliest)."""
    num_layers = angular.shape[0]
    blocks = []
    for n in range(1, num_layers):
        start = int(np.argmin(angular[: num_layers - n + 1, n - 1]))
        blocks.append(list(range(start, start + n)))
    return blocks


def _pruned_losses(
    evalset: EvalSet, removal_sets: list[list[int]], stop: int, advance: Advance
) -> list[float]:
    stack = evalset.stack
    totals = np.zeros(len(removal_sets))
    count = 0
    for batch in evalset.batches(0, stop):
        count += batch.loss_count
        for i, removed in enumerate(removal_sets):
            first = min(removed)
            h = stack.run(batch.states[first], batch.ctx, start=first, overrides=skip_layers(*removed))
            totals[i] += loss_sum_from(stack, h, batch.input_ids)
            advance()
    return (totals / count).tolist()


def similarity_scores(
    evalset: EvalSet, config: SimilarityConfig, progress: ProgressReporter = NO_PROGRESS
) -> SimilarityResult:
    stack = evalset.stack
    num_layers = stack.num_layers
    stop = evalset.limit(config.max_sequences)
    bi_all = np.zeros(num_layers)
    bi_last = np.zeros(num_layers)
    ang_all = np.zeros((num_layers, num_layers))
    ang_last = np.zeros((num_layers, num_layers))
    tokens = 0
    sequences = 0
    with torch.no_grad(), progress.task("similarity", evalset.num_batches(0, stop)) as advance:
        for batch in evalset.batches(0, stop):
            states = batch.states
            tokens += batch.num_tokens
            rows = batch.input_ids.shape[0]
            sequences += rows
            for l in range(num_layers):
                # block_influence averages over the tokens it is given; weight batches by their size.
                bi_all[l] += float(block_influence(states[l], states[l + 1])) * batch.num_tokens
                bi_last[l] += float(block_influence(states[l][:, -1], states[l + 1][:, -1])) * rows
                for n in range(1, num_layers - l + 1):
                    dist = per_token_angular_distance(states[l], states[l + n])
                    ang_all[l, n - 1] += float(dist.sum())
                    ang_last[l, n - 1] += float(dist[:, -1].sum())
            advance()
    invalid = np.add.outer(np.arange(num_layers), np.arange(1, num_layers + 1)) > num_layers
    ang_all = np.where(invalid, np.nan, ang_all / tokens)
    ang_last = np.where(invalid, np.nan, ang_last / sequences)
    bi_all_list = (bi_all / tokens).tolist()

    pruning_bi: list[PruneStep] = []
    pruning_angular: list[PruneStep] = []
    if config.pruning and num_layers > 1:
        prune_stop = evalset.limit(config.prune_max_sequences)
        order = bi_removal_order(bi_all_list)
        bi_sets = [sorted(order[:k]) for k in range(1, num_layers)]
        block_sets = angular_blocks(ang_last)
        total = evalset.num_batches(0, prune_stop) * (len(bi_sets) + len(block_sets))
        with torch.no_grad(), progress.task("pruning", total) as advance:
            losses = _pruned_losses(evalset, bi_sets + block_sets, prune_stop, advance)
        unpruned = PruneStep([], evalset.baseline_loss(0, prune_stop))
        pruning_bi = [unpruned] + [PruneStep(r, loss) for r, loss in zip(bi_sets, losses)]
        pruning_angular = [unpruned] + [
            PruneStep(r, loss) for r, loss in zip(block_sets, losses[len(bi_sets) :])
        ]
    return SimilarityResult(
        block_influence=bi_all_list,
        block_influence_last=(bi_last / sequences).tolist(),
        angular_all=ang_all,
        angular_last=ang_last,
        pruning_bi=pruning_bi,
        pruning_angular=pruning_angular,
    )
