"""Residual-stream profile across depth, through the telemetry's metric functions.

Per state h_0..h_L: mean per-token variance (the paper's residual variance, unbiased over d),
mean per-token L2 norm and RMS. Per layer: mean update norm ||h_{l+1} - h_l|| and mean relative
update ||f_l|| / ||h_l||. Also the variance after the final norm, which is what the paper's
training statistics logged for the last layer (paper_code_spec.md section 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import Scored, SequenceSums, mean_per_token
from megatron_cod.telemetry.metrics import (
    per_token_norm,
    per_token_relative_update,
    per_token_rms,
    per_token_update_norm,
    per_token_variance,
)


@dataclass(frozen=True)
class ResidualConfig:
    max_sequences: int | None = None

    def __post_init__(self) -> None:
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")


@dataclass(frozen=True)
class ResidualResult:
    variance: list[float]  # per state h_0..h_L
    norm: list[float]
    rms: list[float]
    update_norm: list[float]  # per layer
    relative_update: list[float]
    final_norm_variance: float
    variance_stderr: list[float] = field(default_factory=list)
    relative_update_stderr: list[float] = field(default_factory=list)
    num_sequences: int = 0

    def global_metrics(self) -> dict[str, float]:
        return {
            "last_layer_variance": self.variance[-1],
            "last_layer_variance_after_final_norm": self.final_norm_variance,
            "max_variance": max(self.variance),
        }


class ResidualAccumulator(Accumulator):
    """Per sequence: summed per-token variance, norm, RMS of each state and update sizes per layer."""

    name = "variance"
    targets = {"relative_update": 0.01}  # ||f_l|| / ||h_l||

    def __init__(self, stack: LayerStack, cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.states = SequenceSums()  # [n, 3, L + 1]
        self.updates = SequenceSums()  # [n, 2, L]
        self.final = SequenceSums()  # [n, 1]
        self.tokens = SequenceSums()

    def add(self, batch: Batch) -> None:
        states = batch.states
        with torch.no_grad():
            per_state = [
                torch.stack([f(h).sum(dim=1) for f in (per_token_variance, per_token_norm, per_token_rms)], 1)
                for h in states
            ]
            per_layer = [
                torch.stack(
                    [f(h_in, h_out).sum(dim=1) for f in (per_token_update_norm, per_token_relative_update)], 1
                )
                for h_in, h_out in zip(states[:-1], states[1:])
            ]
            final = per_token_variance(self.stack.final_norm(states[-1])).sum(dim=1, keepdim=True)
        self.states.add(torch.stack(per_state, dim=2))
        self.updates.add(torch.stack(per_layer, dim=2))
        self.final.add(final)
        rows, seq = batch.input_ids.shape
        self.tokens.add(np.full(rows, float(seq)))

    def _scores(self) -> tuple[Scored, Scored, Scored]:
        tokens = self.tokens.array()
        return (
            mean_per_token(self.states.array(), tokens),
            mean_per_token(self.updates.array(), tokens),
            mean_per_token(self.final.array(), tokens),
        )

    def stderrs(self) -> dict[str, float]:
        # variance and norms are in the model's units; the relative update is the scale-free score
        _, updates, _ = self._scores()
        return {"relative_update": float(updates.stderr[1].max())}

    def result(self) -> ResidualResult:
        states, updates, final = self._scores()
        return ResidualResult(
            variance=states.value[0].tolist(),
            norm=states.value[1].tolist(),
            rms=states.value[2].tolist(),
            update_norm=updates.value[0].tolist(),
            relative_update=updates.value[1].tolist(),
            final_norm_variance=float(final.value[0]),
            variance_stderr=states.stderr[0].tolist(),
            relative_update_stderr=updates.stderr[1].tolist(),
            num_sequences=self.sequences,
        )


def residual_profile(
    evalset: EvalSet,
    config: ResidualConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> ResidualResult:
    acc = ResidualAccumulator(evalset.stack, evalset.limit(config.max_sequences))
    feed(evalset, [acc], sampling, progress, "residual")
    return acc.result()
