"""Logit lens: decode every residual state h_0..h_L with the final norm + unembedding.

Per state l: mean over tokens of KL(p_final || p_l) (p_final from h_L, the model's output),
top-1 agreement with the model's prediction, and the next-token loss of the decoded distribution,
each with its standard error over sequences. h_L decodes to the model's output itself: its KL is
0, its agreement 1 and its loss the baseline's, taken from the baseline forward, not recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.lm_loss import variant_stats
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import Scored, SequenceSums, mean_per_token, unresolved_pairs


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
    kl_stderr: float = 0.0
    top1_stderr: float = 0.0
    loss_stderr: float = 0.0


@dataclass(frozen=True)
class LogitLensResult:
    states: list[LensState]
    num_sequences: int = 0
    unresolved: list[tuple[int, int]] = field(default_factory=list)  # KL order not resolved

    def global_metrics(self) -> dict[str, float]:
        kl = np.array([s.kl_to_final for s in self.states])
        agree = np.array([s.top1_agreement for s in self.states])
        # h_L decodes to the final distribution itself; average over the states before it.
        return {"lens_mean_kl": float(kl[:-1].mean()), "lens_mean_top1_agreement": float(agree[:-1].mean())}


class LogitLensAccumulator(Accumulator):
    """Per sequence and state: summed KL to the final distribution, top-1 agreement and loss."""

    name = "logit-lens"
    targets = {"kl": 0.01, "top1_agreement": 0.05}  # nats; a fraction of tokens

    def __init__(self, stack: LayerStack, cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.sums = SequenceSums()  # [n, 3, L + 1]: kl, agreement, loss
        self.counts = SequenceSums()  # [n, 2]: tokens, predicted tokens

    def add(self, batch: Batch) -> None:
        b, s = batch.input_ids.shape
        with torch.no_grad():
            reference = batch.reference()
            rows = [variant_stats(self.stack.head(h), batch.input_ids, reference) for h in batch.states[:-1]]
        loss = batch.row_loss_sums
        rows.append(torch.stack([loss, torch.zeros_like(loss), torch.full_like(loss, float(s))], dim=1))
        loss_kl_agree = torch.stack(rows, dim=2)  # [b, 3, L + 1]
        self.sums.add(loss_kl_agree[:, [1, 2, 0]])
        self.counts.add(np.array([[s, s - 1]] * b, dtype=np.float64))
        states = len(batch.states) - 1
        self.count(batch, head=states, compare=states)

    def _scored(self) -> tuple[Scored, Scored]:
        sums, counts = self.sums.array(), self.counts.array()
        per_token = mean_per_token(sums[:, :2], counts[:, 0])
        per_prediction = mean_per_token(sums[:, 2], counts[:, 1])
        return per_token, per_prediction

    def stderrs(self) -> dict[str, float]:
        # the loss's spread across sequences is text difficulty; KL and agreement are paired
        per_token, _ = self._scored()
        return {"kl": float(per_token.stderr[0].max()), "top1_agreement": float(per_token.stderr[1].max())}

    def result(self) -> LogitLensResult:
        per_token, loss = self._scored()
        kl = Scored(per_token.value[0], per_token.stderr[0], per_token.replicates[:, 0])
        states = [
            LensState(
                l,
                float(per_token.value[0, l]),
                float(per_token.value[1, l]),
                float(loss.value[l]),
                float(per_token.stderr[0, l]),
                float(per_token.stderr[1, l]),
                float(loss.stderr[l]),
            )
            for l in range(per_token.value.shape[1])
        ]
        return LogitLensResult(states, self.sequences, unresolved_pairs(kl))


def logit_lens_scores(
    evalset: EvalSet,
    config: LogitLensConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> LogitLensResult:
    acc = LogitLensAccumulator(evalset.stack, evalset.limit(config.max_sequences))
    feed(evalset, [acc], sampling, progress, "logit lens")
    return acc.result()
