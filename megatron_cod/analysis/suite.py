"""Run a chosen set of metrics on one evaluation set: one baseline pass feeds them all, each samples
until its scores are resolved, and the work done is counted against a measured floor."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron_cod.analysis.causal import CausalAccumulator, CausalConfig, CausalResult
from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.jacobian import (
    JacobianAccumulator,
    JacobianConfig,
    JacobianResult,
    layer_input_output,
)
from megatron_cod.analysis.lm_loss import Reference, compare_to, log_probs, row_loss_sums
from megatron_cod.analysis.logit_lens import LogitLensAccumulator, LogitLensConfig, LogitLensResult
from megatron_cod.analysis.permutation import (
    PermutationAccumulator,
    PermutationConfig,
    PermutationResult,
    parse_pairs,
)
from megatron_cod.analysis.progress import NO_PROGRESS, ProgressReporter
from megatron_cod.analysis.residual import ResidualAccumulator, ResidualConfig, ResidualResult
from megatron_cod.analysis.sampling import WORK_UNITS, Accumulator, SamplingConfig, feed
from megatron_cod.analysis.similarity import (
    PruningAccumulator,
    SimilarityAccumulator,
    SimilarityConfig,
    SimilarityResult,
    pruning_sets,
    with_pruning,
)
from megatron_cod.analysis.usefulness import (
    StreamingLeastSquares,
    UsefulnessConfig,
    UsefulnessEval,
    UsefulnessFit,
    UsefulnessResult,
    usefulness_ranges,
)

METRICS = ("jacobian", "usefulness", "causal", "permutation", "similarity", "logit-lens", "variance")


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
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if not self.metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {self.metrics}")


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
    samples: dict[str, int] = field(default_factory=dict)  # sequences each metric used
    work: dict[str, Any] = field(default_factory=dict)  # work units, their costs and the floor
    # metric -> watched score group -> the target standard error it stopped at (empty: no early stop)
    targets: dict[str, dict[str, float]] = field(default_factory=dict)

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
            out["layer/usefulness_loss_ratio_stderr"] = [r.loss_ratio_stderr for r in self.usefulness.layers]
        if self.causal is not None:
            out["layer/skip_kl"] = [s.kl for s in self.causal.skips]
            out["layer/skip_kl_stderr"] = [s.kl_stderr for s in self.causal.skips]
        if self.similarity is not None:
            out["layer/block_influence"] = list(self.similarity.block_influence)
            out["layer/block_influence_stderr"] = list(self.similarity.block_influence_stderr)
        if self.logit_lens is not None:
            out["state/logit_lens_kl"] = [s.kl_to_final for s in self.logit_lens.states]
            out["state/logit_lens_kl_stderr"] = [s.kl_stderr for s in self.logit_lens.states]
        if self.variance is not None:
            out["state/residual_variance"] = list(self.variance.variance)
        return out

    def global_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for result in self.present().values():
            out.update(result.global_metrics())
        return out


def unit_costs(evalset: EvalSet, repeats: int = 3) -> dict[str, float]:
    """Seconds per sequence of one layer forward, one head (norm + unembedding + log-softmax +
    loss), one comparison with the reference distribution (KL + top-1), one layer's update of the
    usefulness least-squares fit and one layer VJP, timed on the first batch (its shape is the
    suite's) with the functions the metrics call; best of ``repeats``, after a warm-up."""
    stack = evalset.stack
    batch = next(evalset.batches(0, min(evalset.batch_size, evalset.num_sequences)))
    rows = batch.input_ids.shape[0]
    h = batch.states[0]

    def layer() -> None:
        with torch.no_grad():
            stack.layer_forward(0, h, batch.ctx)

    def head() -> None:
        with torch.no_grad():
            row_loss_sums(log_probs(stack.head(h)), batch.input_ids)

    with torch.no_grad():
        variant = log_probs(stack.head(h))
        reference = Reference.from_log_probs(log_probs(stack.head(batch.states[-1])))

    def compare() -> None:
        with torch.no_grad():
            compare_to(reference, variant)

    system = StreamingLeastSquares(stack.hidden_size)

    def fit() -> None:
        system.add(batch.states[0], batch.states[1])  # from the second call on, with a merge

    x, y = layer_input_output(stack, batch, 0)
    cotangent = torch.randn_like(y)

    def vjp() -> None:
        torch.autograd.grad(y, x, cotangent, retain_graph=True)

    costs = {}
    for name, fn in (("layer", layer), ("head", head), ("compare", compare), ("fit", fit), ("vjp", vjp)):
        times = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            fn()
            if h.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        costs[name] = min(times[1:]) / rows
    return costs


def _accumulators(evalset: EvalSet, config: SuiteConfig) -> dict[str, Accumulator]:
    stack, metrics, limit = evalset.stack, config.metrics, evalset.limit
    accs: dict[str, Accumulator] = {}
    if "usefulness" in metrics:
        (lo, hi), _ = usefulness_ranges(config.usefulness, evalset.num_sequences)
        accs["usefulness fit"] = UsefulnessFit(stack, lo, hi - lo)
    if "jacobian" in metrics:
        accs["jacobian"] = JacobianAccumulator(stack, config.jacobian, limit(config.jacobian.max_sequences))
    if "causal" in metrics:
        accs["causal"] = CausalAccumulator(stack, limit(config.causal.max_sequences))
    if "permutation" in metrics:
        cfg = config.permutation
        pairs = list(cfg.pairs) if cfg.pairs is not None else parse_pairs("all", stack.num_layers)
        accs["permutation"] = PermutationAccumulator(stack, pairs, limit(cfg.max_sequences))
    if "similarity" in metrics:
        accs["similarity"] = SimilarityAccumulator(stack, limit(config.similarity.max_sequences))
    if "logit-lens" in metrics:
        accs["logit-lens"] = LogitLensAccumulator(stack, limit(config.logit_lens.max_sequences))
    if "variance" in metrics:
        accs["variance"] = ResidualAccumulator(stack, limit(config.variance.max_sequences))
    return accs


def run_suite(
    evalset: EvalSet, config: SuiteConfig, progress: ProgressReporter = NO_PROGRESS
) -> SuiteResults:
    """Run ``config.metrics`` batch-major: every batch's baseline forward feeds every metric.

    Pass 1 feeds the usefulness fit and every metric that needs nothing else; pass 2 the
    usefulness evaluation (needs the fits) and the pruning curves (need the Block Influence
    order). Each metric stops by ``config.sampling``; pass 2 revisits batches (cached while they
    fit in the evaluation set's cache budget, recomputed beyond it).
    """
    started = time.perf_counter()
    results = SuiteResults()
    accs = _accumulators(evalset, config)
    # Unit costs are timed at the start, between the passes and at the end and the fastest of each
    # kept: another process on the machine only ever slows a timing, so this is the floor.
    samples = [unit_costs(evalset)]
    feed(evalset, list(accs.values()), config.sampling, progress, "pass 1")
    samples.append(unit_costs(evalset))
    second: dict[str, Accumulator] = {}
    if "usefulness" in config.metrics:
        fit = accs["usefulness fit"]
        assert isinstance(fit, UsefulnessFit)
        _, (lo, hi) = usefulness_ranges(config.usefulness, evalset.num_sequences)
        second["usefulness"] = UsefulnessEval(evalset.stack, fit.solve(), lo, hi - lo)
    similarity = accs.get("similarity")
    if isinstance(similarity, SimilarityAccumulator):
        results.similarity = similarity.result()
        if config.similarity.pruning and evalset.stack.num_layers > 1:
            bi_sets, block_sets = pruning_sets(results.similarity)
            cap = evalset.limit(config.similarity.prune_max_sequences)
            second["pruning"] = PruningAccumulator(evalset.stack, bi_sets + block_sets, cap)
    feed(evalset, list(second.values()), config.sampling, progress, "pass 2")
    accs.update(second)
    _collect(results, accs, config)
    results.seconds["baseline"] = evalset.forward_seconds
    for name, acc in accs.items():
        results.seconds[name] = acc.seconds
        results.samples[name] = acc.sequences
        results.targets[name] = acc.effective_targets(config.sampling)
    samples.append(unit_costs(evalset))
    costs = {unit: min(sample[unit] for sample in samples) for unit in samples[0]}
    results.seconds["total"] = time.perf_counter() - started
    results.work = work_summary(evalset, accs, costs, results.seconds["total"])
    return results


def _collect(results: SuiteResults, accs: dict[str, Accumulator], config: SuiteConfig) -> None:
    for name, acc in accs.items():
        if isinstance(acc, UsefulnessEval):
            fit = accs["usefulness fit"]
            results.usefulness = acc.result(config.usefulness, fit.sequences)
        elif isinstance(acc, PruningAccumulator) and results.similarity is not None:
            results.similarity = with_pruning(results.similarity, acc)
        elif isinstance(acc, PermutationAccumulator):
            results.permutation = acc.result(config.permutation.decay)
        elif isinstance(
            acc, (JacobianAccumulator, CausalAccumulator, LogitLensAccumulator, ResidualAccumulator)
        ):
            setattr(results, name.replace("-", "_"), acc.result())


def work_summary(
    evalset: EvalSet, accs: dict[str, Accumulator], costs: dict[str, float], seconds: float
) -> dict[str, Any]:
    """Units of work done (baseline forwards included), the time they need at the measured unit
    costs (the floor) and the suite's time over it."""
    units: Counter[str] = Counter()
    units["layer"] += evalset.sequences_forwarded * evalset.stack.num_layers
    units["head"] += evalset.sequences_forwarded + evalset.references_built
    for acc in accs.values():
        units.update(acc.work)
    floor = sum(units[u] * costs[u] for u in WORK_UNITS)
    return {
        "units": {u: int(units[u]) for u in WORK_UNITS},
        "seconds_per_unit": costs,
        "floor_seconds": floor,
        "overhead_ratio": seconds / floor if floor > 0 else float("nan"),
    }
