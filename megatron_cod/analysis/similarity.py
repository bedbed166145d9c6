"""Representation similarity across depth and the pruning curves it suggests.

- Block Influence (ShortGPT): BI_l = 1 - mean_tokens cos(h_l, h_{l+1}), over all tokens and over
  the last token of each sequence.
- Angular distance (Gromov et al.): d(l, n) = mean arccos(cos(h_l, h_{l+n})) / pi for every block
  of n layers starting at l, over all tokens and over last tokens; an L x L table indexed [l, n-1].
- Pruning curves: loss / perplexity with k layers removed (skipped), in increasing-BI order
  (k = 0..L-1), and with the block of n layers of smallest last-token angular distance removed
  (n = 0..L-1). Each pruned forward starts at the first removed layer from its cached input.
Every score has a standard error over sequences; pruning steps also report the loss ratio to
the unpruned model on the same sequences (paired, so its error excludes text difficulty).
The per-token functions are the telemetry's, so a number means the same thing in both places.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack, skip_layers
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.lm_loss import log_probs, row_loss_sums
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import Scored, SequenceSums, mean_per_token, ratio_of_sums, unresolved_pairs
from megatron_cod.telemetry.metrics import per_token_angular_distance, per_token_cosine


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
    loss_stderr: float = 0.0
    loss_ratio: float = 1.0  # to the unpruned loss on the same sequences
    loss_ratio_stderr: float = 0.0

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
    block_influence_stderr: list[float] = field(default_factory=list)
    block_influence_last_stderr: list[float] = field(default_factory=list)
    angular_all_stderr: np.ndarray | None = None
    angular_last_stderr: np.ndarray | None = None
    num_sequences: int = 0
    pruning_sequences: int = 0
    unresolved: list[tuple[int, int]] = field(default_factory=list)  # Block Influence order

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


class SimilarityAccumulator(Accumulator):
    """Per sequence: summed cosines of consecutive states and summed angular distances of blocks."""

    name = "similarity"
    targets = {"similarity": 0.01}  # Block Influence (1 - cos) and angular distance / pi, both in [0, 1]

    def __init__(self, stack: LayerStack, cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.sums = SequenceSums()  # [n, 2 + 2L, L]: cos all, cos last, angular all, angular last
        self.tokens = SequenceSums()

    def add(self, batch: Batch) -> None:
        states, num_layers = batch.states, self.stack.num_layers
        rows, seq = batch.input_ids.shape
        sums = torch.zeros(
            rows, 2 + 2 * num_layers, num_layers, dtype=torch.float64, device=self.stack.device
        )
        with torch.no_grad():
            for l in range(num_layers):
                cos = per_token_cosine(states[l], states[l + 1])
                sums[:, 0, l] = cos.sum(dim=1)
                sums[:, 1, l] = cos[:, -1]
                for n in range(1, num_layers - l + 1):
                    dist = per_token_angular_distance(states[l], states[l + n])
                    sums[:, 2 + l, n - 1] = dist.sum(dim=1)
                    sums[:, 2 + num_layers + l, n - 1] = dist[:, -1]
        self.sums.add(sums)
        self.tokens.add(np.full(rows, float(seq)))

    def _scores(self) -> tuple[Scored, Scored]:
        sums = self.sums.array()
        per_token = mean_per_token(
            sums[:, [0] + list(range(2, 2 + self.stack.num_layers))], self.tokens.array()
        )
        last = [1] + list(range(2 + self.stack.num_layers, 2 + 2 * self.stack.num_layers))
        per_sequence = mean_per_token(sums[:, last], np.ones(sums.shape[0]))
        return per_token, per_sequence

    def stderrs(self) -> dict[str, float]:
        per_token, per_sequence = self._scores()
        return {"similarity": float(max(np.nanmax(per_token.stderr), np.nanmax(per_sequence.stderr)))}

    def result(self) -> SimilarityResult:
        num_layers = self.stack.num_layers
        per_token, per_sequence = self._scores()
        invalid = np.add.outer(np.arange(num_layers), np.arange(1, num_layers + 1)) > num_layers
        masked = lambda a: np.where(invalid, np.nan, a)  # noqa: E731
        bi = Scored(1 - per_token.value[0], per_token.stderr[0], -per_token.replicates[:, 0])
        return SimilarityResult(
            block_influence=bi.value.tolist(),
            block_influence_last=(1 - per_sequence.value[0]).tolist(),
            angular_all=masked(per_token.value[1:]),
            angular_last=masked(per_sequence.value[1:]),
            pruning_bi=[],
            pruning_angular=[],
            block_influence_stderr=bi.stderr.tolist(),
            block_influence_last_stderr=per_sequence.stderr[0].tolist(),
            angular_all_stderr=masked(per_token.stderr[1:]),
            angular_last_stderr=masked(per_sequence.stderr[1:]),
            num_sequences=self.sequences,
            unresolved=unresolved_pairs(bi),
        )


def pruning_sets(result: SimilarityResult) -> tuple[list[list[int]], list[list[int]]]:
    """Removal sets: k = 1..L-1 lowest-Block-Influence layers, and the best angular block per size."""
    num_layers = len(result.block_influence)
    order = bi_removal_order(result.block_influence)
    return [sorted(order[:k]) for k in range(1, num_layers)], angular_blocks(result.angular_last)


class PruningAccumulator(Accumulator):
    """Per sequence: the summed loss with each removal set skipped, and the unpruned loss."""

    name = "pruning"
    targets = {"loss_ratio": 0.01}  # pruned loss / unpruned loss

    def __init__(self, stack: LayerStack, removal_sets: list[list[int]], cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.removal_sets = removal_sets
        self.losses = SequenceSums()  # [n, sets + 1]
        self.predicted = SequenceSums()

    def add(self, batch: Batch) -> None:
        stack = self.stack
        columns = []
        with torch.no_grad():
            for removed in self.removal_sets:
                first = min(removed)
                h = stack.run(batch.states[first], batch.ctx, start=first, overrides=skip_layers(*removed))
                columns.append(row_loss_sums(log_probs(stack.head(h)), batch.input_ids))
        columns.append(batch.row_loss_sums)
        self.losses.add(torch.stack(columns, dim=1))
        rows, seq = batch.input_ids.shape
        self.predicted.add(np.full(rows, float(seq - 1)))
        layers = sum(stack.num_layers - min(r) - len(r) for r in self.removal_sets)
        self.count(batch, layer=layers, head=len(self.removal_sets))

    def _ratios(self) -> Scored:
        losses = self.losses.array()
        return ratio_of_sums(losses[:, :-1], losses[:, -1:])

    def stderrs(self) -> dict[str, float]:
        return {"loss_ratio": float(self._ratios().stderr.max())}

    def steps(self) -> list[PruneStep]:
        """The unpruned step, then one per removal set."""
        losses = mean_per_token(self.losses.array(), self.predicted.array())
        ratios = self._ratios()
        unpruned = PruneStep([], float(losses.value[-1]), float(losses.stderr[-1]))
        return [unpruned] + [
            PruneStep(
                r,
                float(losses.value[i]),
                float(losses.stderr[i]),
                float(ratios.value[i]),
                float(ratios.stderr[i]),
            )
            for i, r in enumerate(self.removal_sets)
        ]


def with_pruning(result: SimilarityResult, pruning: PruningAccumulator) -> SimilarityResult:
    """``result`` with the pruning curves measured by ``pruning`` (made from its pruning_sets)."""
    steps = pruning.steps()
    num_bi = len(result.block_influence) - 1
    return dataclasses.replace(
        result,
        pruning_bi=steps[: num_bi + 1],
        pruning_angular=steps[:1] + steps[num_bi + 1 :],
        pruning_sequences=pruning.sequences,
    )


def similarity_scores(
    evalset: EvalSet,
    config: SimilarityConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> SimilarityResult:
    stack = evalset.stack
    stats = SimilarityAccumulator(stack, evalset.limit(config.max_sequences))
    feed(evalset, [stats], sampling, progress, "similarity")
    result = stats.result()
    if not config.pruning or stack.num_layers < 2:
        return result
    bi_sets, block_sets = pruning_sets(result)
    pruning = PruningAccumulator(stack, bi_sets + block_sets, evalset.limit(config.prune_max_sequences))
    feed(evalset, [pruning], sampling, progress, "pruning")
    return with_pruning(result, pruning)
