"""Residual-stream profile across depth, through the telemetry's metric functions.

Per state h_0..h_L: mean per-token variance (the paper's residual variance, unbiased over d),
mean per-token L2 norm and RMS. Per layer: mean update norm ||h_{l+1} - h_l|| and mean relative
update ||f_l|| / ||h_l||. Also the variance after the final norm, which is what the paper's
training statistics logged for the last layer (paper_code_spec.md section 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
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

    def global_metrics(self) -> dict[str, float]:
        return {
            "last_layer_variance": self.variance[-1],
            "last_layer_variance_after_final_norm": self.final_norm_variance,
            "max_variance": max(self.variance),
        }


def residual_profile(
    evalset: EvalSet, config: ResidualConfig, progress: ProgressReporter = NO_PROGRESS
) -> ResidualResult:
    stack = evalset.stack
    num_layers = stack.num_layers
    stop = evalset.limit(config.max_sequences)
    state_sums = np.zeros((3, num_layers + 1))
    update_sums = np.zeros((2, num_layers))
    final_var = 0.0
    tokens = 0
    with torch.no_grad(), progress.task("residual", evalset.num_batches(0, stop)) as advance:
        for batch in evalset.batches(0, stop):
            states = batch.states
            tokens += batch.num_tokens
            for l, h in enumerate(states):
                state_sums[:, l] += [
                    float(per_token_variance(h).sum()),
                    float(per_token_norm(h).sum()),
                    float(per_token_rms(h).sum()),
                ]
            for l in range(num_layers):
                update_sums[:, l] += [
                    float(per_token_update_norm(states[l], states[l + 1]).sum()),
                    float(per_token_relative_update(states[l], states[l + 1]).sum()),
                ]
            final_var += float(per_token_variance(stack.final_norm(states[-1])).sum())
            advance()
    state_means = state_sums / tokens
    update_means = update_sums / tokens
    return ResidualResult(
        variance=state_means[0].tolist(),
        norm=state_means[1].tolist(),
        rms=state_means[2].tolist(),
        update_norm=update_means[0].tolist(),
        relative_update=update_means[1].tolist(),
        final_norm_variance=final_var / tokens,
    )
