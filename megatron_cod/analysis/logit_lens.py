"""Logit lens: decode every residual state h_0..h_L with the final norm + unembedding.

Per state l: mean over tokens of KL(p_final || p_l) (p_final from h_L, the model's output),
top-1 agreement with the model's prediction, and the next-token loss of the decoded distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.lm_loss import log_probs, row_loss_sums, token_kl, top1_agreement
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter


@dataclass(frozen=True)
class LogitLensConfig:
    max_sequences: int | None = None

    def __post_init__(self) -> None:
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")


@dataclass(frozen=True)
class LensState:
    state: int  # h_state: 0 = embeddings, l + 1 = output of layer l
    kl_to_final: float
    top1_agreement: float
    loss: float


@dataclass(frozen=True)
class LogitLensResult:
    states: list[LensState]

    def global_metrics(self) -> dict[str, float]:
        kl = np.array([s.kl_to_final for s in self.states])
        agree = np.array([s.top1_agreement for s in self.states])
        # h_L decodes to the final distribution itself; average over the states before it.
        return {"lens_mean_kl": float(kl[:-1].mean()), "lens_mean_top1_agreement": float(agree[:-1].mean())}


def logit_lens_scores(
    evalset: EvalSet, config: LogitLensConfig, progress: ProgressReporter = NO_PROGRESS
) -> LogitLensResult:
    stack = evalset.stack
    num_states = stack.num_layers + 1
    stop = evalset.limit(config.max_sequences)
    kl = np.zeros(num_states)
    agree = np.zeros(num_states)
    loss = np.zeros(num_states)
    tokens = 0
    loss_tokens = 0
    with torch.no_grad(), progress.task("logit lens", evalset.num_batches(0, stop)) as advance:
        for batch in evalset.batches(0, stop):
            tokens += batch.num_tokens
            loss_tokens += batch.loss_count
            final = log_probs(stack.head(batch.states[-1]))
            for l, h in enumerate(batch.states):
                decoded = log_probs(stack.head(h))
                kl[l] += float(token_kl(final, decoded).sum())
                agree[l] += float(top1_agreement(final, decoded).sum())
                loss[l] += float(row_loss_sums(decoded, batch.input_ids).sum())
            advance()
    return LogitLensResult(
        [
            LensState(l, float(kl[l] / tokens), float(agree[l] / tokens), float(loss[l] / loss_tokens))
            for l in range(num_states)
        ]
    )
