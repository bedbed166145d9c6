"""Run a chosen set of metrics on one evaluation set, sharing its cached layer inputs, with timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from megatron_cod.analysis.causal import CausalConfig, CausalResult, causal_scores
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.jacobian import JacobianConfig, JacobianResult, jacobian_scores
from megatron_cod.analysis.logit_lens import LogitLensConfig, LogitLensResult, logit_lens_scores
from megatron_cod.analysis.permutation import PermutationConfig, PermutationResult, permutation_scores
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.residual import ResidualConfig, ResidualResult, residual_profile
from megatron_cod.analysis.similarity import SimilarityConfig, SimilarityResult, similarity_scores
from megatron_cod.analysis.usefulness import UsefulnessConfig, UsefulnessResult, usefulness_scores

METRICS = ("jacobian", "usefulness", "causal", "permutation", "similarity", "logit-lens", "variance")

_RUNNERS = {
    "jacobian": jacobian_scores,
    "usefulness": usefulness_scores,
    "causal": causal_scores,
    "permutation": permutation_scores,
    "similarity": similarity_scores,
    "logit-lens": logit_lens_scores,
    "variance": residual_profile,
}


@dataclass(frozen=True)
class SuiteConfig:
    metrics: tuple[str, ...]
    jacobian: JacobianConfig = field(default_factory=JacobianConfig)
    usefulness: UsefulnessConfig = field(default_factory=UsefulnessConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)
    permutation: PermutationConfig = field(default_factory=PermutationConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    logit_lens: LogitLensConfig = field(default_factory=LogitLensConfig)
    variance: ResidualConfig = field(default_factory=ResidualConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if not self.metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {self.metrics}")

    def config_for(self, metric: str) -> Any:
        return getattr(self, metric.replace("-", "_"))


@dataclass
class SuiteResults:
    jacobian: JacobianResult | None = None
    usefulness: UsefulnessResult | None = None
    causal: CausalResult | None = None
    permutation: PermutationResult | None = None
    similarity: SimilarityResult | None = None
    logit_lens: LogitLensResult | None = None
    variance: ResidualResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def present(self) -> dict[str, Any]:
        """Metric name -> result, for the metrics that ran, in suite order."""
        out = {}
        for metric in METRICS:
            result = getattr(self, metric.replace("-", "_"))
            if result is not None:
                out[metric] = result
        return out

    def layer_curves(self) -> dict[str, list[float]]:
        """Per-layer (``layer/...``) and per-state (``state/...``) curves; index = MLflow step."""
        out: dict[str, list[float]] = {}
        if self.jacobian is not None:
            for variant in dict.fromkeys(e.variant for e in self.jacobian.layers):
                out[f"layer/jacobian_{variant}_norm"] = [
                    e.scores.jacobian_norm.value for e in self.jacobian.for_variant(variant)
                ]
        if self.usefulness is not None:
            out["layer/usefulness_loss_ratio"] = [r.loss_ratio for r in self.usefulness.layers]
        if self.causal is not None:
            out["layer/skip_kl"] = [s.kl for s in self.causal.skips]
        if self.similarity is not None:
            out["layer/block_influence"] = list(self.similarity.block_influence)
        if self.logit_lens is not None:
            out["state/logit_lens_kl"] = [s.kl_to_final for s in self.logit_lens.states]
        if self.variance is not None:
            out["state/residual_variance"] = list(self.variance.variance)
        return out

    def global_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for result in self.present().values():
            out.update(result.global_metrics())
        return out


def run_suite(
    evalset: EvalSet, config: SuiteConfig, progress: ProgressReporter = NO_PROGRESS
) -> SuiteResults:
    """Run ``config.metrics`` in suite order; the baseline forwards are shared through ``evalset``."""
    results = SuiteResults()
    if evalset.caches_states:
        start = time.perf_counter()
        with progress.task("baseline", evalset.num_batches()) as advance:
            for _ in evalset.batches():
                advance()
        results.seconds["baseline"] = time.perf_counter() - start
    for metric in METRICS:
        if metric not in config.metrics:
            continue
        start = time.perf_counter()
        setattr(
            results, metric.replace("-", "_"), _RUNNERS[metric](evalset, config.config_for(metric), progress)
        )
        results.seconds[metric] = time.perf_counter() - start
    return results
