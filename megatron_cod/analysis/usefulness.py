"""Usefulness: can a layer be replaced by an affine map of its input without hurting the loss?

For each layer l, fit y = x W + b by least squares on (h_l, h_{l+1}) over the fit tokens, run the
model with layer l replaced by that map (from the cached h_l), and compare the loss with the
baseline: loss_ratio = L_l / L_0. A layer is useful when the ratio exceeds the threshold (the
paper: 1.1); the score is the fraction of useful layers. The map is applied as x @ W + b; the
paper's code put W (not W^T) into nn.Linear.weight and so applied x W^T + b.

The fit streams over batches in one pass, centring and merging QR factors in float64
(StreamingLeastSquares: no normal equations, so the condition number is not squared; the
minimum-norm solution when the tokens do not determine W). The target is the raw layer output for every layer (the paper's
dense runs fitted the last layer to the final-normed state). The paper evaluates on the fitting
tokens; ``held_out_fit`` fits on the first part of the sequences and evaluates (baseline
included) on the rest. The fit always uses every sequence it may; ``eval_max_sequences`` caps
the (costly) evaluated part, and adaptive sampling may stop it earlier. Loss ratios have a
standard error over the evaluated sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack, replace_layer
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.lm_loss import log_probs, row_loss_sums
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed
from megatron_cod.analysis.stats import Scored, SequenceSums, ratio_of_sums, unresolved_pairs


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
    loss_ratio_stderr: float = 0.0


@dataclass(frozen=True)
class UsefulnessResult:
    baseline_loss: float
    threshold: float
    held_out_fit: bool
    fit_sequences: int
    eval_sequences: int
    layers: list[LayerUsefulness]
    unresolved: list[tuple[int, int]] = field(default_factory=list)  # loss-ratio order not resolved

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


class StreamingLeastSquares:
    """Least squares y ~ x W + b over rows streamed in batches, by merged QR factors (float64).

    Each batch is centred and reduced to the R factor of [x_c | y_c]; factors merge by a QR of
    [R_a; R_b; sqrt(n_a n_b / n) (mean_b - mean_a)] (the exact R of the pooled centred rows).
    Centring removes the intercept column and with it the ill-conditioning of an offset; the
    solve works on R, whose condition number is that of the centred x, not its square as with
    normal equations. The minimum-norm W when the tokens do not determine it.
    """

    def __init__(self, d_in: int) -> None:
        self.d_in = d_in
        self.r: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        z = torch.cat([x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])], dim=1).double()
        rows, mean = z.shape[0], z.mean(dim=0)
        r = torch.linalg.qr(z - mean, mode="r").R
        if self.r is None or self.mean is None:
            self.r, self.mean, self.count = r, mean, rows
            return
        total = self.count + rows
        shift = ((self.count * rows / total) ** 0.5 * (mean - self.mean)).unsqueeze(0)
        self.r = torch.linalg.qr(torch.cat([self.r, r, shift]), mode="r").R
        self.mean = self.mean + (mean - self.mean) * (rows / total)
        self.count = total

    def solve(self) -> tuple[AffineMap, float]:
        """The least-squares map and its residual relative to the variance of y."""
        if self.r is None or self.mean is None:
            raise ValueError("no rows to fit")
        d = self.d_in
        width = self.r.shape[1]
        r = torch.zeros(width, width, dtype=torch.float64, device=self.r.device)
        r[: self.r.shape[0]] = self.r[:width]
        r11, r12, r22 = r[:d, :d], r[:d, d:], r[d:, d:]
        weight = torch.linalg.pinv(r11) @ r12
        residual = ((r11 @ weight - r12) ** 2).sum() + (r22 * r22).sum()
        total = (r12 * r12).sum() + (r22 * r22).sum()  # ||y - mean y||^2
        bias = self.mean[d:] - self.mean[:d] @ weight
        relative = float(residual / total) if total > 0 else 0.0
        return AffineMap(weight.float(), bias.float()), relative


class UsefulnessFit(Accumulator):
    """One pass over the fit sequences: a streaming least-squares fit (h_l -> h_{l+1}) per layer."""

    name = "usefulness fit"  # no targets: the fit uses every sequence it may

    def __init__(self, stack: LayerStack, first: int, cap: int) -> None:
        super().__init__(first, cap)
        self.systems = [StreamingLeastSquares(stack.hidden_size) for _ in range(stack.num_layers)]

    def add(self, batch: Batch) -> None:
        for layer, system in enumerate(self.systems):
            system.add(batch.states[layer], batch.states[layer + 1])
        self.count(batch, fit=len(self.systems))

    def solve(self) -> list[tuple[AffineMap, float]]:
        return [system.solve() for system in self.systems]


class UsefulnessEval(Accumulator):
    """Per sequence: the summed loss with each layer replaced by its fit, and the baseline's."""

    name = "usefulness"
    targets = {"loss_ratio": 0.01}  # resolves ratios 0.02 apart; the threshold is 1.1

    def __init__(self, stack: LayerStack, fits: list[tuple[AffineMap, float]], first: int, cap: int) -> None:
        super().__init__(first, cap)
        self.stack = stack
        self.fits = fits
        self.losses = SequenceSums()  # [n, L + 1]
        self.loss_count = 0

    def add(self, batch: Batch) -> None:
        stack = self.stack
        columns = []
        with torch.no_grad():
            for layer, (affine, _) in enumerate(self.fits):
                h = stack.run(
                    batch.states[layer], batch.ctx, start=layer, overrides=replace_layer(layer, affine)
                )
                columns.append(row_loss_sums(log_probs(stack.head(h)), batch.input_ids))
        columns.append(batch.row_loss_sums)
        self.losses.add(torch.stack(columns, dim=1))
        self.loss_count += batch.loss_count
        num_layers = stack.num_layers
        self.count(batch, layer=num_layers * (num_layers - 1) // 2, head=num_layers)

    def ratios(self) -> Scored:
        losses = self.losses.array()
        return ratio_of_sums(losses[:, :-1], losses[:, -1:])

    def stderrs(self) -> dict[str, float]:
        return {"loss_ratio": float(self.ratios().stderr.max())}

    def result(self, config: UsefulnessConfig, fit_sequences: int) -> UsefulnessResult:
        ratios = self.ratios()
        totals = self.losses.array().sum(axis=0)
        baseline = float(totals[-1] / self.loss_count)
        layers = []
        for layer, (_, residual) in enumerate(self.fits):
            loss = float(totals[layer] / self.loss_count)
            ratio = float(ratios.value[layer])
            layers.append(
                LayerUsefulness(
                    layer,
                    loss,
                    ratio,
                    loss - baseline,
                    ratio > config.threshold,
                    residual,
                    float(ratios.stderr[layer]),
                )
            )
        return UsefulnessResult(
            baseline_loss=baseline,
            threshold=config.threshold,
            held_out_fit=config.held_out_fit,
            fit_sequences=fit_sequences,
            eval_sequences=self.sequences,
            layers=layers,
            unresolved=unresolved_pairs(ratios),
        )


def usefulness_ranges(config: UsefulnessConfig, total: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """([first, stop) of the fit sequences, [first, stop) of the evaluated ones) among ``total``."""
    cap = total if config.eval_max_sequences is None else config.eval_max_sequences
    if config.held_out_fit:
        split = int(round(total * config.fit_fraction))
        if not 0 < split < total:
            raise ValueError(f"held-out fit needs at least 2 sequences, got {total}")
        return (0, split), (split, min(total, split + cap))
    return (0, total), (0, min(total, cap))


def usefulness_scores(
    evalset: EvalSet,
    config: UsefulnessConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> UsefulnessResult:
    stack = evalset.stack
    (fit_lo, fit_hi), (eval_lo, eval_hi) = usefulness_ranges(config, evalset.num_sequences)
    fit = UsefulnessFit(stack, fit_lo, fit_hi - fit_lo)
    feed(evalset, [fit], None, progress, "usefulness fit")
    evaluation = UsefulnessEval(stack, fit.solve(), eval_lo, eval_hi - eval_lo)
    feed(evalset, [evaluation], sampling, progress, "usefulness")
    return evaluation.result(config, fit.sequences)
