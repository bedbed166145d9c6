"""Usefulness: can a layer be replaced by an affine map of its input without hurting the loss?

For each layer l, fit y = x W + b by least squares on (h_l, h_{l+1}) over the fit tokens, run the
model with layer l replaced by that map (from the cached h_l), and compare the loss with the
baseline: loss_ratio = L_l / L_0. A layer is useful when the ratio exceeds the threshold (the
paper: 1.1); the score is the fraction of useful layers. The map is applied as x @ W + b; the
paper's code put W (not W^T) into nn.Linear.weight and so applied x W^T + b.

The fit accumulates the normal equations [x, 1]^T [x, 1] and [x, 1]^T y in float64 over batches
and solves them with a rank-revealing least-squares solver (the minimum-norm solution when
the tokens do not determine W). The target is the raw layer output for every layer (the paper's
dense runs fitted the last layer to the final-normed state). The paper evaluates on the fitting
tokens; ``held_out_fit`` fits on the first part of the sequences and evaluates (baseline
included) on the rest. The fit always uses every sequence it may; ``eval_max_sequences`` caps
the (costly) evaluated part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_cod.analysis.adapter import replace_layer
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.lm_loss import loss_sum_from
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter


@dataclass(frozen=True)
class UsefulnessConfig:
    threshold: float = 1.1
    held_out_fit: bool = False
    fit_fraction: float = 0.5
    eval_max_sequences: int | None = None  # cap on the evaluated sequences; the fit uses all it may

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError("usefulness threshold must be > 0")
        if not 0 < self.fit_fraction < 1:
            raise ValueError("fit_fraction must lie in (0, 1)")
        if self.eval_max_sequences is not None and self.eval_max_sequences < 1:
            raise ValueError("eval_max_sequences must be >= 1")


@dataclass(frozen=True)
class LayerUsefulness:
    layer: int
    loss: float
    loss_ratio: float
    loss_increase: float
    useful: bool
    fit_relative_residual: float  # ||y - (x W + b)||^2 / ||y - mean y||^2 on the fit tokens


@dataclass(frozen=True)
class UsefulnessResult:
    baseline_loss: float
    threshold: float
    held_out_fit: bool
    fit_sequences: int
    eval_sequences: int
    layers: list[LayerUsefulness]

    @property
    def score(self) -> float:
        return float(np.mean([layer.useful for layer in self.layers]))

    def global_metrics(self) -> dict[str, float]:
        return {
            "usefulness_score": self.score,
            "num_useful_layers": float(sum(layer.useful for layer in self.layers)),
            "mean_loss_increase": float(np.mean([layer.loss_increase for layer in self.layers])),
            "mean_loss_ratio": float(np.mean([layer.loss_ratio for layer in self.layers])),
        }


@dataclass(frozen=True)
class AffineMap:
    """y = x @ weight + bias, weight [d_in, d_out]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight + self.bias


class NormalEquations:
    """Running [x, 1]^T [x, 1], [x, 1]^T y and y statistics in float64."""

    def __init__(self, d: int) -> None:
        self.gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        self.cross = torch.zeros(d + 1, d, dtype=torch.float64)
        self.y_sum = torch.zeros(d, dtype=torch.float64)
        self.y_sq = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x1 = torch.cat(
            [x.reshape(-1, x.shape[-1]).double(), x.new_ones(x[..., :1].numel(), 1, dtype=torch.float64)], 1
        )
        y2 = y.reshape(-1, y.shape[-1]).double()
        self.gram += x1.T @ x1
        self.cross += x1.T @ y2
        self.y_sum += y2.sum(dim=0)
        self.y_sq += (y2 * y2).sum()
        self.count += y2.shape[0]

    def solve(self) -> tuple[AffineMap, float]:
        """The least-squares map and its residual relative to the variance of y."""
        solution = torch.linalg.lstsq(self.gram, self.cross, driver="gelsd").solution
        # ||y - x1 P||^2 = ||y||^2 - 2 tr(P^T X1^T y) + tr(P^T G P)
        residual = self.y_sq - 2 * (solution * self.cross).sum() + (solution * (self.gram @ solution)).sum()
        total = self.y_sq - (self.y_sum * self.y_sum).sum() / self.count
        relative = float(residual.clamp_min(0) / total) if total > 0 else 0.0
        return AffineMap(solution[:-1].float(), solution[-1].float()), relative


def usefulness_scores(
    evalset: EvalSet, config: UsefulnessConfig, progress: ProgressReporter = NO_PROGRESS
) -> UsefulnessResult:
    stack = evalset.stack
    num_layers = stack.num_layers
    total = evalset.num_sequences
    cap = total if config.eval_max_sequences is None else config.eval_max_sequences
    if config.held_out_fit:
        split = int(round(total * config.fit_fraction))
        if not 0 < split < total:
            raise ValueError(f"held-out fit needs at least 2 sequences, got {total}")
        fit_range, eval_range = (0, split), (split, min(total, split + cap))
    else:
        fit_range, eval_range = (0, total), (0, min(total, cap))

    systems = [NormalEquations(stack.hidden_size) for _ in range(num_layers)]
    with progress.task("usefulness fit", evalset.num_batches(*fit_range)) as advance:
        for batch in evalset.batches(*fit_range):
            for layer, system in enumerate(systems):
                system.add(batch.states[layer], batch.states[layer + 1])
            advance()
    fits = [system.solve() for system in systems]

    baseline = evalset.baseline_loss(*eval_range)
    loss_sums = [0.0] * num_layers
    count = 0
    with (
        torch.no_grad(),
        progress.task("usefulness", evalset.num_batches(*eval_range) * num_layers) as advance,
    ):
        for batch in evalset.batches(*eval_range):
            count += batch.loss_count
            for layer, (affine, _) in enumerate(fits):
                h = stack.run(
                    batch.states[layer], batch.ctx, start=layer, overrides=replace_layer(layer, affine)
                )
                loss_sums[layer] += loss_sum_from(stack, h, batch.input_ids)
                advance()
    layers = []
    for layer, ((_, residual), loss_sum) in enumerate(zip(fits, loss_sums)):
        loss = loss_sum / count
        ratio = loss / baseline
        layers.append(
            LayerUsefulness(layer, loss, ratio, loss - baseline, ratio > config.threshold, residual)
        )
    return UsefulnessResult(
        baseline_loss=baseline,
        threshold=config.threshold,
        held_out_fit=config.held_out_fit,
        fit_sequences=fit_range[1] - fit_range[0],
        eval_sequences=eval_range[1] - eval_range[0],
        layers=layers,
    )
