"""Per-layer Jacobian of h_l -> h_{l+1} and its distance from the identity, in fp32.

Two variants (J[i, j] = d y_i / d x_j, averaged over the N = b*s tokens):
- "cross" (the paper's): J = (1/N) sum_{b,t,t'} d y[b,t'] / d x[b,t]: cross-token terms included,
  i.e. the response of the summed output to shifting every input token by the same vector.
- "position" (same-position): J = (1/N) sum_{b,t} d y[b,t] / d x[b,t].
y is the layer's raw output for every layer, the last included (the paper's dense runs took the
final-normed state there).

Modes:
- "exact": J row by row with one vector-Jacobian product per hidden unit (cross: d VJPs per batch
  and layer; position: s*d VJPs, so meant for small models), all from the layer inputs captured
  in one model forward; the paper ran one full forward per layer.
- "randomized": K Rademacher probes u_k give u_k^T J through one VJP each (cross) or two VJPs with
  independent random token signs that cancel the cross-token terms in expectation (position);
  see probe_estimators for the estimators and their standard errors. Probes are the same for all
  batches of a layer, so the estimate targets exactly the J of the exact mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_cod.analysis.adapter import LayerStack
from megatron_cod.analysis.evalset import Batch, EvalSet
from megatron_cod.analysis.probe_estimators import (
    IdentityDistance,
    exact_identity_distance,
    randomized_identity_distance,
)
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.sampling import Accumulator, SamplingConfig, feed

MODES = ("exact", "randomized")
VARIANTS = ("cross", "position")


@dataclass(frozen=True)
class JacobianConfig:
    mode: str = "randomized"
    variants: tuple[str, ...] = VARIANTS
    num_probes: int = 16
    seed: int = 0
    max_sequences: int | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"jacobian mode must be one of {MODES}, got {self.mode!r}")
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(
                f"jacobian variants must be a non-empty subset of {VARIANTS}, got {self.variants}"
            )
        if self.num_probes < 3:
            raise ValueError("num_probes must be >= 3")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")


@dataclass(frozen=True)
class LayerJacobian:
    layer: int
    variant: str
    scores: IdentityDistance


@dataclass(frozen=True)
class JacobianResult:
    mode: str
    num_probes: int | None
    num_tokens: int
    layers: list[LayerJacobian] = field(default_factory=list)
    num_sequences: int = 0

    def for_variant(self, variant: str) -> list[LayerJacobian]:
        return [entry for entry in self.layers if entry.variant == variant]

    def global_metrics(self) -> dict[str, float]:
        """The paper's reductions over layers (compute_jacobian.py), per variant."""
        out = {}
        for variant in dict.fromkeys(entry.variant for entry in self.layers):
            rows = self.for_variant(variant)
            diag_means = np.array([r.scores.diagonal_mean.value for r in rows])
            out.update(
                {
                    f"jacobian_{variant}_mean_norm": float(
                        np.mean([r.scores.jacobian_norm.value for r in rows])
                    ),
                    # how close the deep half sits to the identity: the curse of depth's signature
                    f"jacobian_{variant}_last_half_mean_norm": float(
                        np.mean([r.scores.jacobian_norm.value for r in rows[len(rows) // 2 :]])
                    ),
                    f"jacobian_{variant}_mean_off_diagonal_norm": float(
                        np.mean([r.scores.off_diagonal_norm.value for r in rows])
                    ),
                    f"jacobian_{variant}_residual_strength": float(diag_means.mean()),
                    f"jacobian_{variant}_identity_preservation_score": float((diag_means > 0.5).mean()),
                }
            )
        return out


def layer_input_output(stack: LayerStack, batch: Batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached input of ``layer`` as a leaf requiring grad, and the layer's output graph."""
    x = batch.states[layer].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = stack.layer_forward(layer, x, batch.ctx)
    return x, y


def _vjp(y: torch.Tensor, x: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(y, x, cotangent, retain_graph=True)[0]


def cross_token_vjp_sums(y: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Row k: sum over tokens of the VJP with cotangent u_k at every position, = N u_k^T J_cross.

    With probes = I this is N J_cross row by row: the paper's per-unit loop, from a cached input.
    """
    return torch.stack([_vjp(y, x, u.expand_as(y)).sum(dim=(0, 1)) for u in probes]).double()


def position_vjp_sums(
    y: torch.Tensor, x: torch.Tensor, probes: torch.Tensor, signs: torch.Tensor
) -> torch.Tensor:
    """Row k: sum_t sigma_k[t] g_k[t] with g_k the VJP of cotangent sigma_k[t'] u_k (signs [K, b, s]).

    Expectation over the signs is N u_k^T J_position: the cross-token terms carry a factor
    sigma[t] sigma[t'] of mean zero.
    """
    rows = []
    for u, sigma in zip(probes, signs):
        g = _vjp(y, x, sigma.unsqueeze(-1) * u)
        rows.append((sigma.unsqueeze(-1) * g).sum(dim=(0, 1)))
    return torch.stack(rows).double()


def exact_position_sums(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """N J_position row by row: one VJP per (position, hidden unit), s*d in all."""
    _, seq, d = y.shape
    total = torch.zeros(d, d, dtype=torch.float64, device=y.device)
    cotangent = torch.zeros_like(y)
    for t in range(seq):
        for i in range(d):
            cotangent[:, t, i] = 1.0
            total[i] += _vjp(y, x, cotangent)[:, t].sum(dim=0).double()
            cotangent[:, t, i] = 0.0
    return total


def _generator(seed: int, layer: int, variant: str) -> torch.Generator:
    state = np.random.SeedSequence([seed, layer, VARIANTS.index(variant)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # drawn on the CPU generator (the same numbers on every device), then moved
    return (torch.randint(0, 2, shape, generator=generator, device="cpu").float() * 2 - 1).to(device)


class _LayerSums:
    """Running VJP sums of one (layer, variant) over batches, on the model's device."""

    def __init__(
        self, config: JacobianConfig, layer: int, variant: str, d: int, device: torch.device
    ) -> None:
        self.variant = variant
        self.exact = config.mode == "exact"
        self.device = device
        self.generator = _generator(config.seed, layer, variant)
        shape = (d, d) if self.exact else (config.num_probes, d)
        self.probes = (
            torch.eye(d, device=device) if self.exact else _rademacher(shape, self.generator, device)
        )
        self.sums = [torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(2)]

    def add(self, y: torch.Tensor, x: torch.Tensor) -> None:
        if self.exact and self.variant == "position":
            self.sums[0] += exact_position_sums(y, x)
        elif self.variant == "cross":
            self.sums[0] += cross_token_vjp_sums(y, x, self.probes)
        else:
            k = self.probes.shape[0]
            for part in range(2):
                signs = _rademacher((k, *y.shape[:2]), self.generator, self.device)
                self.sums[part] += position_vjp_sums(y, x, self.probes, signs)

    def vjps_per_sequence(self, seq_length: int) -> int:
        if self.exact:
            return self.probes.shape[0] * (seq_length if self.variant == "position" else 1)
        return self.probes.shape[0] * (1 if self.variant == "cross" else 2)

    def finish(self, num_tokens: int) -> IdentityDistance:
        if self.exact:
            return exact_identity_distance(self.sums[0] / num_tokens)
        u = self.probes.double()
        w1 = self.sums[0] / num_tokens - u
        w2 = w1 if self.variant == "cross" else self.sums[1] / num_tokens - u
        return randomized_identity_distance(u, w1, w2)


class JacobianAccumulator(Accumulator):
    """VJP sums of every (layer, variant) over the sequences seen; the probes are fixed per layer."""

    name = "jacobian"
    targets = {"jacobian_norm": 0.01}  # ||J - I||_F / d
    chunk = 2  # each sequence costs hundreds of VJPs: take few at a time so sampling can stop early
    min_samples = 2

    def __init__(self, stack: LayerStack, config: JacobianConfig, cap: int) -> None:
        super().__init__(0, cap)
        self.stack = stack
        self.config = config
        self.layers = tuple(range(stack.num_layers)) if config.layers is None else config.layers
        self.sums = {
            (layer, variant): _LayerSums(config, layer, variant, stack.hidden_size, stack.device)
            for layer in self.layers
            for variant in config.variants
        }
        self.num_tokens = 0

    def add(self, batch: Batch) -> None:
        self.num_tokens += batch.num_tokens
        vjps = 0
        for layer in self.layers:
            x, y = layer_input_output(self.stack, batch, layer)
            for variant in self.config.variants:
                self.sums[(layer, variant)].add(y, x)
                vjps += self.sums[(layer, variant)].vjps_per_sequence(batch.input_ids.shape[1])
        self.count(batch, layer=len(self.layers), vjp=vjps)

    def result(self) -> JacobianResult:
        entries = [
            LayerJacobian(layer, variant, self.sums[(layer, variant)].finish(self.num_tokens))
            for variant in self.config.variants
            for layer in self.layers
        ]
        return JacobianResult(
            mode=self.config.mode,
            num_probes=None if self.config.mode == "exact" else self.config.num_probes,
            num_tokens=self.num_tokens,
            layers=entries,
            num_sequences=self.sequences,
        )

    def stderrs(self) -> dict[str, float]:
        # the probe (jackknife) error of ||J - I||_F / d; 0 in exact mode
        return {"jacobian_norm": max(entry.scores.jacobian_norm.stderr for entry in self.result().layers)}


def jacobian_scores(
    evalset: EvalSet,
    config: JacobianConfig,
    progress: ProgressReporter = NO_PROGRESS,
    sampling: SamplingConfig | None = None,
) -> JacobianResult:
    """Identity-distance scores of every layer's Jacobian, averaged over the evaluation tokens."""
    acc = JacobianAccumulator(evalset.stack, config, evalset.limit(config.max_sequences))
    feed(evalset, [acc], sampling, progress, "jacobian")
    return acc.result()
