"""Causal (skip) effect: how much skipping layer s changes what every later layer writes.

C[s, l] = mean_tokens ||f~_l - f_l|| / mean_tokens ||f_l|| for l > s, where f_l = h_{l+1} - h_l
is layer l's update in the unperturbed model and f~_l the same layer's update when layer s is
skipped (its output is its input). Aligned definition: the paper's dense runs compared layer l+1's
skipped-run update with layer l's baseline update (paper_code_spec.md section 2.3). Entries with
l <= s are 0. Also per skipped layer: KL(p_base || p_skip) of the output distribution, top-1
agreement and loss ratio. Each skipped forward starts at layer s from its cached input. Every
score has a standard error over sequences (stats.jackknife of the per-sequence sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack, skip_layers
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.lm_loss import variant_stats
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import (
    Scored,
    SequenceSums,
    jackknife,
    mean_per_token,
    ratio_of_sums,
    unresolved_pairs,
)
from megatron_cod.telemetry.metrics import per_token_norm

_DENOMINATOR_FLOOR = 1e-8  # the paper's guard: C = 0 where the mean update norm is this small


@dataclass(frozen=True)
class CausalConfig:
    max_sequences: int | None = None

    def __post_init__(self) -> None:
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")


@dataclass(frozen=True)
class SkipEffect:
    layer: int
    kl: float  # mean over tokens of KL(p_base || p_skip), nats
    top1_agreement: float
    loss: float
    loss_ratio: float
    mean_effect: float  # mean of C[s, l] over l > s (NaN for the last layer)
    kl_stderr: float = 0.0
    top1_stderr: float = 0.0
    loss_ratio_stderr: float = 0.0


@dataclass(frozen=True)
class CausalResult:
    baseline_loss: float
    matrix: np.ndarray  # [L, L], C[s, l]
    skips: list[SkipEffect]
    matrix_stderr: np.ndarray | None = None  # [L, L]
    num_sequences: int = 0
    unresolved: list[tuple[int, int]] = field(default_factory=list)  # skip-KL order not resolved

    @property
    def score(self) -> float:
        """Mean of C over the valid entries s < l (the paper's bar values are this average)."""
        upper = self.matrix[np.triu_indices(self.matrix.shape[0], k=1)]
        return float(upper.mean()) if upper.size else float("nan")

    def global_metrics(self) -> dict[str, float]:
        return {
            "causal_score": self.score,
            "mean_skip_kl": float(np.mean([s.kl for s in self.skips])),
            "mean_skip_loss_ratio": float(np.mean([s.loss_ratio for s in self.skips])),
        }


def _matrix(totals: np.ndarray, num_layers: int) -> np.ndarray:
    """C from totals [m, L*L numerators | L denominators | 1 token count] (leading batch axis m)."""
    m = totals.shape[0]
    numerator = totals[:, : num_layers * num_layers].reshape(m, num_layers, num_layers)
    denominator = totals[:, num_layers * num_layers : -1]
    tokens = totals[:, -1:]
    valid = (denominator / tokens > _DENOMINATOR_FLOOR)[:, None, :]
    matrix = np.where(valid, numerator / np.maximum(denominator, 1e-300)[:, None, :], 0.0)
    return np.triu(matrix, k=1)


class CausalAccumulator(Accumulator):
    """Per sequence: the update-difference and update norms, and each skip's KL, agreement, loss."""

    name = "causal"
    targets = {
        # C[s, l] is a relative change of a layer's update, of order 0.1-1 (1 = as large as the
        # update itself): 0.05 resolves cells 0.1 apart, far finer than the patterns the matrix shows.
        "matrix": 0.05,
        "skip_kl": 0.01,  # nats
        "top1_agreement": 0.05,  # a fraction of tokens
        "loss_ratio": 0.01,
    }

    def __init__(self, stack: LayerStack, cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.effects = SequenceSums()  # [n, L*L + L + 1]: numerators C[s, l], denominators, tokens
        self.outputs = SequenceSums()  # [n, 3, L]: kl, agreement, loss of each skip
        self.base = SequenceSums()  # [n, 2]: baseline loss sum, predicted tokens

    def add(self, batch: Batch) -> None:
        stack, states = self.stack, batch.states
        num_layers = stack.num_layers
        rows = batch.input_ids.shape[0]
        numerator = torch.zeros(rows, num_layers, num_layers, dtype=torch.float64, device=stack.device)
        outputs = torch.zeros(rows, 3, num_layers, dtype=torch.float64, device=stack.device)
        with torch.no_grad():
            base_updates = [states[l + 1] - states[l] for l in range(num_layers)]
            denominator = torch.stack([per_token_norm(f).sum(dim=1) for f in base_updates], dim=1)
            reference = batch.reference()
            for s in range(num_layers):

                def compare(position: int, h_in: torch.Tensor, h_out: torch.Tensor, s: int = s) -> None:
                    if position > s:
                        diff = h_out - h_in - base_updates[position]
                        numerator[:, s, position] = per_token_norm(diff).sum(dim=1)

                h = stack.run(states[s], batch.ctx, start=s, overrides=skip_layers(s), hook=compare)
                loss, kl, agree = variant_stats(stack.head(h), batch.input_ids, reference).unbind(1)
                outputs[:, 0, s], outputs[:, 1, s], outputs[:, 2, s] = kl, agree, loss
        tokens = torch.full((rows, 1), batch.input_ids.shape[1], dtype=torch.float64, device=stack.device)
        self.effects.add(torch.cat([numerator.reshape(rows, -1), denominator.double(), tokens], dim=1))
        self.outputs.add(outputs)
        self.base.add(torch.stack([batch.row_loss_sums.double(), tokens[:, 0] - 1], dim=1))
        # a skip at s re-runs layers s+1..L-1 (the skipped position itself costs nothing)
        self.count(batch, layer=num_layers * (num_layers - 1) // 2, head=num_layers, compare=num_layers)

    def _scores(self) -> tuple[Scored, Scored, Scored]:
        num_layers = self.stack.num_layers
        matrix = jackknife(lambda t: _matrix(t, num_layers), self.effects.array())
        outputs, base = self.outputs.array(), self.base.array()
        seq_len = self.effects.array()[:, -1]
        per_token = mean_per_token(outputs[:, :2], seq_len)
        ratio = ratio_of_sums(outputs[:, 2], base[:, :1])
        return matrix, per_token, ratio

    def stderrs(self) -> dict[str, float]:
        matrix, per_token, ratio = self._scores()
        upper = matrix.stderr[np.triu_indices(self.stack.num_layers, k=1)]
        return {
            "matrix": float(upper.max(initial=0.0)),
            "skip_kl": float(per_token.stderr[0].max()),
            "top1_agreement": float(per_token.stderr[1].max()),
            "loss_ratio": float(ratio.stderr.max()),
        }

    def result(self) -> CausalResult:
        matrix, per_token, ratio = self._scores()
        outputs, base = self.outputs.array(), self.base.array()
        baseline = float(base[:, 0].sum() / base[:, 1].sum())
        skips = []
        for s in range(self.stack.num_layers):
            later = matrix.value[s, s + 1 :]
            skips.append(
                SkipEffect(
                    layer=s,
                    kl=float(per_token.value[0, s]),
                    top1_agreement=float(per_token.value[1, s]),
                    loss=float(outputs[:, 2, s].sum() / base[:, 1].sum()),
                    loss_ratio=float(ratio.value[s]),
                    mean_effect=float(later.mean()) if later.size else float("nan"),
                    kl_stderr=float(per_token.stderr[0, s]),
                    top1_stderr=float(per_token.stderr[1, s]),
                    loss_ratio_stderr=float(ratio.stderr[s]),
                )
            )
        kl = Scored(per_token.value[0], per_token.stderr[0], per_token.replicates[:, 0])
        return CausalResult(
            baseline_loss=baseline,
            matrix=matrix.value,
            skips=skips,
            matrix_stderr=np.triu(matrix.stderr, k=1),
            num_sequences=self.sequences,
            unresolved=unresolved_pairs(kl),
        )


def causal_scores(
    evalset: EvalSet,
    config: CausalConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> CausalResult:
    acc = CausalAccumulator(evalset.stack, evalset.limit(config.max_sequences))
    feed(evalset, [acc], sampling, progress, "causal")
    return acc.result()
