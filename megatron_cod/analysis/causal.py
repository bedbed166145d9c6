"""Causal (skip) effect: how much skipping layer s changes what every later layer writes.

C[s, l] = mean_tokens ||f~_l - f_l|| / mean_tokens ||f_l|| for l > s, where f_l = h_{l+1} - h_l
is layer l's update in the unperturbed model and f~_l the same layer's update when layer s is
skipped (its output is its input). Aligned definition: the paper's dense runs compared layer l+1's
skipped-run update with layer l's baseline update (paper_code_spec.md section 2.3). Entries with
l <= s are 0. Also per skipped layer: KL(p_base || p_skip) of the output distribution, top-1
agreement and loss ratio. Each skipped forward starts at layer s from its cached input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.adapter import skip_layers
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.lm_loss import log_probs, row_loss_sums, token_kl, top1_agreement
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
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


@dataclass(frozen=True)
class CausalResult:
    baseline_loss: float
    matrix: np.ndarray  # [L, L], C[s, l]
    skips: list[SkipEffect]

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


def causal_scores(
    evalset: EvalSet, config: CausalConfig, progress: ProgressReporter = NO_PROGRESS
) -> CausalResult:
    stack = evalset.stack
    num_layers = stack.num_layers
    stop = evalset.limit(config.max_sequences)
    numerator = np.zeros((num_layers, num_layers))
    denominator = np.zeros(num_layers)
    kl_sum = np.zeros(num_layers)
    agree_sum = np.zeros(num_layers)
    loss_sum = np.zeros(num_layers)
    tokens = 0
    loss_tokens = 0
    with torch.no_grad(), progress.task("causal", evalset.num_batches(0, stop) * num_layers) as advance:
        for batch in evalset.batches(0, stop):
            states = batch.states
            tokens += batch.num_tokens
            loss_tokens += batch.loss_count
            base_updates = [states[l + 1] - states[l] for l in range(num_layers)]
            for l in range(num_layers):
                denominator[l] += float(per_token_norm(base_updates[l]).sum())
            base = log_probs(stack.head(states[-1]))
            for s in range(num_layers):

                def compare(
                    position: int,
                    h_in: torch.Tensor,
                    h_out: torch.Tensor,
                    s: int = s,
                    base_updates: list = base_updates,
                ) -> None:
                    if position > s:
                        numerator[s, position] += float(
                            per_token_norm(h_out - h_in - base_updates[position]).sum()
                        )

                h = stack.run(states[s], batch.ctx, start=s, overrides=skip_layers(s), hook=compare)
                skipped = log_probs(stack.head(h))
                kl_sum[s] += float(token_kl(base, skipped).sum())
                agree_sum[s] += float(top1_agreement(base, skipped).sum())
                loss_sum[s] += float(row_loss_sums(skipped, batch.input_ids).sum())
                advance()
    mean_den = denominator / tokens
    matrix = np.where(
        mean_den[None, :] > _DENOMINATOR_FLOOR, numerator / np.maximum(denominator, 1e-300)[None, :], 0.0
    )
    matrix = np.triu(matrix, k=1)
    baseline = evalset.baseline_loss(0, stop)
    skips = []
    for s in range(num_layers):
        later = matrix[s, s + 1 :]
        loss = float(loss_sum[s] / loss_tokens)
        skips.append(
            SkipEffect(
                layer=s,
                kl=float(kl_sum[s] / tokens),
                top1_agreement=float(agree_sum[s] / tokens),
                loss=loss,
                loss_ratio=loss / baseline,
                mean_effect=float(later.mean()) if later.size else float("nan"),
            )
        )
    return CausalResult(baseline_loss=baseline, matrix=matrix, skips=skips)
